"""Input checks shared by triggers, attacks and metrics: float NCHW images in [0, 1]."""

from __future__ import annotations

import torch
from torch import Tensor

from advml.errors import InputError


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
    if x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x))  # one pass; NaN propagates into lo/hi
        if not (lo >= 0 and hi <= 1):
            if lo != lo or hi != hi:
                raise InputError(f"{name} contain NaN")
            raise InputError(f"{name} must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return x
