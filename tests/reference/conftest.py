"""Fixtures of the reference ports: a few real CIFAR-10 images and a tiny fixed model, all in float64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from advml.data.base import TensorImageDataset
from advml.models.wrapper import ImageClassifier

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def tiny_model(seed: int = 0, num_classes: int = 10) -> ImageClassifier:
    """Conv-BN-ReLU-pool twice, adaptive average pooling (any input size), a linear head; float64."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = ImageClassifier(backbone, 16, num_classes, CIFAR_MEAN, CIFAR_STD).double()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that eval mode is not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


class Float64Images(TensorImageDataset):
    """Float64 images handed out as they are stored (the library's datasets hand out float32)."""

    def get_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


@pytest.fixture
def as_dataset():
    """as_dataset(x, y) -> a float64 ImageDataset of 10 classes."""
    return lambda x, y: Float64Images(x, y, [str(c) for c in range(10)])


@pytest.fixture(scope="session")
def cifar(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 20 images of each class of the real CIFAR-10 test set, as float64 [0, 1] NCHW, and labels."""
    d = np.load(data_dir / "cifar10.npz", allow_pickle=False)
    y = torch.from_numpy(d["y_test"].astype(np.int64))
    idx = torch.cat([torch.nonzero(y == c)[:20, 0] for c in range(10)])
    x = torch.from_numpy(d["x_test"][idx.numpy()]).permute(0, 3, 1, 2).double() / 255
    return x.contiguous(), y[idx]


@pytest.fixture
def new_model():
    """The tiny model's factory: new_model(seed=0) -> a fresh float64 copy in train mode."""
    return tiny_model


@pytest.fixture
def model() -> ImageClassifier:
    """A fresh tiny float64 model in eval mode."""
    return tiny_model().eval()
