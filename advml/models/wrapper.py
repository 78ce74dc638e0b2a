"""The classifier wrapper every model shares: [0,1] images in, normalisation inside, `features()` exposed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ImageClassifier(nn.Module):
    """normalise -> backbone (penultimate features, flat) -> linear head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: Tensor) -> Tensor:
        """Map [0,1] pixels to the backbone's input space."""
        return (x - self.mean) / self.std

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (N, feature_dim) of [0,1] images."""
        return self.backbone(self.normalize(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) of [0,1] images."""
        return self.head(self.features(x))
