"""Input checks shared by triggers, attacks, metrics, datasets and weights: one place for value checks."""

from __future__ import annotations

import torch
from torch import Tensor

from advml.errors import AdvmlError, InputError


def check_unit_range(x: Tensor, name: str, error: type[AdvmlError] = InputError) -> Tensor:
    """Raise `error` unless every value of the float tensor `x` lies in [0, 1] (so no NaN or inf)."""
    if x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))  # one pass; NaN propagates into lo/hi
        if not (lo >= 0 and hi <= 1):
            if lo != lo or hi != hi:
                raise error(f"{name}: NaN values")
            raise error(f"{name} must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return x


def check_finite(x: Tensor, name: str, error: type[AdvmlError] = InputError) -> Tensor:
    """Raise `error` if the tensor `x` holds NaN or inf."""
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        raise error(f"{name}: NaN or inf values")
    return x


def check_images(x: object, name: str = "images", channels: int | None = None) -> Tensor:
    """Raise InputError unless `x` is a float tensor (N,C,H,W) with values in [0,1] (so no NaN or inf)."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be float in [0, 1], got dtype {x.dtype} (divide uint8 images by 255)")
    if x.ndim != 4:
        raise InputError(f"{name} must be (N, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise InputError(f"{name} must have {channels} channels, got shape {tuple(x.shape)}")
    return check_unit_range(x, name)


def check_labels(labels: Tensor, num_classes: int, name: str = "labels",
                 error: type[AdvmlError] = InputError) -> Tensor:
    """Raise `error` unless every label lies in [0, num_classes)."""
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise error(f"{name} must lie in [0, {num_classes}), got [{lo}, {hi}]")
    return labels
