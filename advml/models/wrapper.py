"""The classifier wrapper every model shares: [0,1] images in, normalisation inside, `features()` exposed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advml.utils.precision import Precision, at_least_float32, autocast


class ImageClassifier(nn.Module):
    """normalise -> backbone (penultimate features, flat) -> linear head.

    `precision` (set by `advml.utils.precision.set_precision`, e.g. by the Trainer): with bf16 the forward pass
    runs under autocast on channels_last inputs; outputs are float32 (or float64 for a float64 model)."""

    precision: Precision | None = None
    mean: Tensor  # buffers (register_buffer in __init__)
    std: Tensor

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
        x = (x - self.mean) / self.std
        if self.precision is not None and self.precision.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (N, feature_dim) of [0,1] images."""
        with autocast(x.device, self.precision is not None and self.precision.amp):
            return at_least_float32(self.backbone(self.normalize(x)).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) of [0,1] images."""
        with autocast(x.device, self.precision is not None and self.precision.amp):
            return at_least_float32(self.head(self.features(x)))

    @property
    def needs_data_init(self) -> bool:
        """Whether the backbone waits for a data-dependent initialisation (e.g. a whitening layer)."""
        return bool(getattr(self.backbone, "needs_data_init", False))

    @torch.no_grad()
    def data_init(self, x: Tensor) -> None:
        """Initialise the backbone's data-dependent layers from [0,1] training images."""
        # the backbone's own data_init (AirNet's), which nn.Module's typing cannot see
        self.backbone.data_init(self.normalize(x.to(self.mean.device)).float())  # type: ignore[operator]
