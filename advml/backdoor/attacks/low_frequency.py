"""Low-Frequency attack (Zeng et al. 2021): a universal low-frequency pattern added and clipped, as in BackdoorBench."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from advml.backdoor.attacks.base import ATTACKS, AttackSettings, BackdoorAttack
from advml.backdoor.triggers import AdditiveTrigger, Trigger
from advml.data.registry import find_file
from advml.errors import DataError, InputError
from advml.utils.io import load_npz, npz_keys

PATTERNS = "triggers/backdoorbench/lowFrequency.npz"


class LowFrequencySettings(AttackSettings):
    """Low-Frequency settings; the pattern is BackdoorBench's `resource/lowFrequency/<key>.npy`."""

    pattern_file: str = Field(PATTERNS, description="npz of patterns, or one .npy (path; the default "
                                                    "ships in the package)")
    key: str = Field("cifar10_preactresnet18_0_255", description="array in the npz: <dataset>_<model>_0_255")
    pattern_range: Literal["auto", "0_255", "0_1"] = Field(
        "auto", description="scale of the pattern values: auto = 0_255 for integer arrays or any value above 1, "
                            "else 0_1")


def load_low_frequency_pattern(path: str, key: str, pattern_range: str = "auto") -> Tensor:
    """A pattern from `path` (npz key, or the one array of a .npy) as float (C,H,W) on the [0,1] image scale."""
    found = find_file(path)
    arrays = load_npz(found, [key, "arr_0"])
    if key in arrays:
        arr = arrays[key]
    elif found.suffix == ".npy":
        arr = arrays["arr_0"]
    else:
        raise DataError(f"{found}: no pattern {key!r}; available: {', '.join(sorted(npz_keys(found)))}")
    if arr.ndim == 4 and arr.shape[0] == 1:  # (1,H,W,C): BackdoorBench takes the first
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise DataError(f"{found}: pattern {key!r} has shape {arr.shape}; expected (H,W,C), (1,H,W,C) or (H,W)")
    if arr.dtype.kind not in "uif" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise DataError(f"{found}: pattern {key!r} must be finite numbers, got dtype {arr.dtype}")
    t = torch.from_numpy(arr.astype(np.float64)).permute(2, 0, 1)
    if pattern_range == "auto":
        pattern_range = "0_255" if arr.dtype.kind in "ui" or float(t.abs().max()) > 1 else "0_1"
    if pattern_range == "0_255":
        t = t / 255
    if float(t.abs().max()) > 1:
        raise DataError(f"{found}: pattern {key!r} exceeds the image range on the {pattern_range} scale")
    return t.float()


@ATTACKS.register("low_frequency", title="Low-frequency")
class LowFrequency(BackdoorAttack):
    """Low-Frequency: BackdoorBench's universal low-frequency pattern added and clipped; rate = fraction of the whole
    training set

    Low-Frequency: x' = clip(x + pattern), a universal low-frequency perturbation (0..51 of 255 by default).
    BackdoorBench adds the stored array to the uint8 image unscaled and casts to uint8; its float keys hold values
    0..0.2, so there they change nothing. Their maximum 0.2 = 51/255 matches the integer keys, so pattern_range
    'auto' reads them on the [0,1] scale; '0_255' reproduces BackdoorBench literally."""

    Settings = LowFrequencySettings
    settings: LowFrequencySettings

    def build_trigger(self, image_shape: tuple[int, int, int]) -> Trigger:
        s = self.settings
        delta = load_low_frequency_pattern(s.pattern_file, s.key, s.pattern_range)
        c, h, w = image_shape
        if tuple(delta.shape[1:]) != (h, w) or delta.shape[0] not in (1, c):
            raise InputError(f"low-frequency pattern {s.key!r} is {delta.shape[0]}x{delta.shape[1]}x{delta.shape[2]} "
                             f"(CxHxW) but the images are {c}x{h}x{w}; pick a key made for {h}x{w} images "
                             f"(BackdoorBench: cifar10/cifar100/gtsrb are 32x32, tiny is 64x64)")
        return AdditiveTrigger(delta)
