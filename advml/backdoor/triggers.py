"""Triggers: pure, batched, device-agnostic transforms of float (N,C,H,W) images in [0, 1]."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

from advml.errors import ConfigError, DataError, InputError
from advml.utils.checks import check_images
from advml.utils.io import load_image

CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")


class Trigger(ABC):
    """`apply(x, train=...)` maps a batch of clean images to triggered ones."""

    def apply(self, x: Tensor, *, train: bool = True) -> Tensor:
        """Triggered copy of `x` (float (N,C,H,W) in [0,1]); `train` picks the train- or test-time trigger."""
        check_images(x, "trigger input")
        return self._apply(x, train)

    @abstractmethod
    def _apply(self, x: Tensor, train: bool) -> Tensor:
        """The transform itself, on validated input: returns a new tensor in [0,1], leaves `x` untouched."""


class MaskTrigger(Trigger):
    """x' = (1 - m) * x + m * p for a fixed pattern p and mask m (a patch, a watermark or a blend)."""

    def __init__(self, pattern: Tensor, mask: Tensor) -> None:
        if pattern.ndim != 3 or mask.ndim != 3 or mask.shape[0] not in (1, pattern.shape[0]) \
                or mask.shape[1:] != pattern.shape[1:]:
            raise InputError(f"pattern must be (C,H,W) and mask (1|C,H,W) of the same size, "
                             f"got {tuple(pattern.shape)} and {tuple(mask.shape)}")
        for name, t in (("pattern", pattern), ("mask", mask)):
            check_images(t[None].float(), f"trigger {name}")
        self.pattern, self.mask = pattern.float(), mask.float()
        rows, cols = mask.amax(0).nonzero(as_tuple=True)
        # only the mask's bounding box changes: a 3x3 patch touches 9 pixels, not the whole image
        self.box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1)) \
            if rows.numel() else (slice(0, 0), slice(0, 0))
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this trigger fits."""
        return tuple(self.pattern.shape)  # type: ignore[return-value]

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._cache:
            r, c = self.box
            self._cache[device] = (self.pattern[:, r, c].to(device), self.mask[:, r, c].to(device))
        return self._cache[device]

    def _apply(self, x: Tensor, train: bool) -> Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise InputError(f"trigger is for images of shape {self.shape}, got {tuple(x.shape[1:])}")
        p, m = self._on(x.device)
        out = x.clone()
        r, c = self.box
        out[..., r, c] = torch.lerp(x[..., r, c], p.to(x.dtype), m.to(x.dtype))  # convex: stays in [0,1]
        return out

    @classmethod
    def square(cls, image_shape: tuple[int, int, int], size: int = 3, value: float = 1.0,
               corner: str = "bottom_right", margin: int = 0) -> MaskTrigger:
        """A size x size square of one value at a corner, `margin` pixels from the edges."""
        return cls._patch(image_shape, torch.full((size, size), float(value)), corner, margin)

    @classmethod
    def checkerboard(cls, image_shape: tuple[int, int, int], size: int = 3, corner: str = "bottom_right",
                     margin: int | tuple[int, int] = 0, inner: float = 1.0) -> MaskTrigger:
        """A size x size black/white checkerboard with white corners at a corner of the image (BackdoorBench's
        trigger_image_grid.png); `inner` is the value of the patch's corner pixel that faces the image centre
        (EBD's gridTrigger: 0). `margin`: pixels from the edges, or (from top/bottom, from left/right)."""
        ij = torch.arange(size)
        patch = ((ij[:, None] + ij[None, :]) % 2 == 0).float()
        patch[0 if corner.startswith("bottom") else -1, 0 if corner.endswith("right") else -1] = float(inner)
        return cls._patch(image_shape, patch, corner, margin)

    @classmethod
    def ebd_four_corners(cls, image_shape: tuple[int, int, int], size: int = 3) -> MaskTrigger:
        """EBD's fourCornerTrigger (the D-ST code's CL trigger): its gridTrigger checkerboard (the pixel facing the
        image centre black) at all four corners, flush with the bottom and right edges but 1 px from the top and
        left ones (the code writes rows/columns 1..3 there)."""
        return cls.union([cls.checkerboard(image_shape, size, c, (int(c.startswith("top")), int(c.endswith("left"))),
                                           inner=0.0) for c in CORNERS])

    @classmethod
    def union(cls, triggers: list[MaskTrigger]) -> MaskTrigger:
        """One trigger stamping several non-overlapping patches (e.g. a checkerboard in all four corners)."""
        pattern = torch.stack([t.pattern * t.mask for t in triggers]).sum(0)
        mask = torch.stack([t.mask.expand_as(t.pattern) for t in triggers]).amax(0)
        return cls(pattern.clamp(0, 1), mask)

    @classmethod
    def _patch(cls, image_shape: tuple[int, int, int], patch: Tensor, corner: str,
               margin: int | tuple[int, int]) -> MaskTrigger:
        c, h, w = image_shape
        s = patch.shape[0]
        mr, mc = (margin, margin) if isinstance(margin, int) else margin
        if corner not in CORNERS:
            raise ConfigError(f"unknown corner {corner!r}; valid: {', '.join(CORNERS)}")
        if s < 1 or min(mr, mc) < 0 or s + mr > h or s + mc > w:
            raise ConfigError(f"a {s}x{s} patch {margin} px from the edge does not fit {h}x{w} images")
        top = h - mr - s if corner.startswith("bottom") else mr
        left = w - mc - s if corner.endswith("right") else mc
        pattern, mask = torch.zeros(c, h, w), torch.zeros(1, h, w)
        pattern[:, top:top + s, left:left + s] = patch
        mask[:, top:top + s, left:left + s] = 1
        return cls(pattern, mask)

    @classmethod
    def from_files(cls, image: str | os.PathLike[str], mask: str | os.PathLike[str] | None = None,
                   image_shape: tuple[int, int, int] | None = None) -> MaskTrigger:
        """A patch image plus a mask file (non-zero = trigger); without a mask, the image's non-zero pixels."""
        pattern = _image_tensor(image)
        m = (_image_tensor(mask) if mask is not None else pattern).amax(0, keepdim=True).gt(0).float()
        if image_shape is not None and (pattern.shape[1:] != image_shape[1:] or m.shape[1:] != image_shape[1:]):
            raise InputError(f"trigger image {image} is {pattern.shape[2]}x{pattern.shape[1]} but the data is "
                             f"{image_shape[2]}x{image_shape[1]}; use a trigger made for this image size")
        if image_shape is not None and image_shape[0] == 1:
            pattern = pattern.mean(0, keepdim=True)
        return cls(pattern, m)


def _image_tensor(path: str | os.PathLike[str]) -> Tensor:
    """An image file (PNG/JPEG) or a .npy array (HWC uint8) as float (C,H,W) in [0,1]."""
    if str(path).endswith(".npy"):
        from advml.utils.io import load_array

        arr = load_array(path)
    else:
        arr = load_image(path)
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.size == 0:
        raise DataError(f"trigger file {path} must hold an (H, W), (H, W, 1) or (H, W, 3) image, "
                        f"got shape {arr.shape}")
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"trigger file {path} must hold uint8 pixels or floats in [0, 1], got {arr.dtype}")
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return t.float() / 255 if t.dtype == torch.uint8 else t.float()


class AdditiveTrigger(Trigger):
    """x' = clip(x + delta, 0, 1) for a fixed signed pattern delta (SIG's sinusoid, Trojan's square)."""

    def __init__(self, delta: Tensor) -> None:
        if delta.ndim != 3 or not torch.isfinite(delta).all() or delta.abs().max() > 1:
            raise InputError(f"delta must be a finite (C,H,W) tensor in [-1, 1], got shape {tuple(delta.shape)}")
        self.delta = delta.float()
        self._cache: dict[torch.device, Tensor] = {}

    def _apply(self, x: Tensor, train: bool) -> Tensor:
        if x.shape[2:] != self.delta.shape[1:] or self.delta.shape[0] not in (1, x.shape[1]):
            raise InputError(f"trigger is for images of shape {tuple(self.delta.shape)}, got {tuple(x.shape[1:])}")
        if x.device not in self._cache:
            self._cache[x.device] = self.delta.to(x.device)
        return (x + self._cache[x.device].to(x.dtype)).clamp_(0, 1)


class TrainTestTrigger(Trigger):
    """One trigger for poisoning the training set and another at test time (e.g. SIG's 40 vs 60)."""

    def __init__(self, train: Trigger, test: Trigger) -> None:
        self.train_trigger, self.test_trigger = train, test

    def _apply(self, x: Tensor, train: bool) -> Tensor:
        return (self.train_trigger if train else self.test_trigger)._apply(x, train)


def load_pattern(path: str | os.PathLike[str], image_shape: tuple[int, int, int]) -> Tensor:
    """A pattern file (image or .npy, values 0..255) resized to (C,H,W) of the data, float in [0,1]."""
    from torchvision.transforms.v2 import functional as TF

    from advml.data.registry import find_file

    t = _image_tensor(find_file(path))
    c, h, w = image_shape
    if t.shape[1:] != (h, w):
        t = TF.resize(t, [h, w], antialias=True).clamp_(0, 1)
    if t.shape[0] != c:
        t = t.mean(0, keepdim=True).expand(c, h, w).clone() if c == 1 else t.expand(c, h, w).clone()
    return t
