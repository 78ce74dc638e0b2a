"""Trojan with the precomputed square trigger of the D-ST paper's code (from NAD), added then clipped."""

from __future__ import annotations

import torch
from pydantic import Field

from advml.backdoor.attacks.base import ATTACKS, AttackSettings, BackdoorAttack
from advml.backdoor.triggers import AdditiveTrigger, Trigger
from advml.data.registry import find_file
from advml.errors import DataError, InputError
from advml.utils.io import load_npz


class TrojanSettings(AttackSettings):
    """Trojan settings: the trigger file holds key `x`, (3,H,W) float on the 0-255 scale."""

    trigger_file: str = Field("triggers/d-st/best_square_trigger_cifar10.npz",
                              description="npz with the additive trigger (path; the default ships in the package)")


@ATTACKS.register("trojan", title="Trojan")
class Trojan(BackdoorAttack):
    """Trojan: precomputed square trigger added and clipped; rate = fraction of the whole training set

    Trojan: x' = clip(x + trigger). The original code casts to uint8 before clipping, which wraps     values above
    255 around to dark pixels; advml clips first, as intended."""

    Settings = TrojanSettings
    settings: TrojanSettings

    def build_trigger(self, image_shape: tuple[int, int, int]) -> Trigger:
        path = find_file(self.settings.trigger_file)
        arrays = load_npz(path, ["x"])
        if "x" not in arrays:
            raise DataError(f"{path}: no array 'x' (the additive trigger)")
        delta = torch.from_numpy(arrays["x"]).float() / 255
        if delta.ndim == 3 and delta.shape[-1] in (1, 3) and delta.shape[0] not in (1, 3):
            delta = delta.permute(2, 0, 1)
        if tuple(delta.shape[1:]) != tuple(image_shape[1:]) or delta.shape[0] not in (1, image_shape[0]):
            raise InputError(f"{path}: trigger of shape {tuple(delta.shape)} does not fit images {image_shape}")
        return AdditiveTrigger(delta)
