"""SIG (Barni et al. 2019): a clean-label attack adding a horizontal sinusoid to target-class images."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from advml.backdoor.attacks.base import ATTACKS, AttackSettings, BackdoorAttack
from advml.backdoor.triggers import AdditiveTrigger, TrainTestTrigger, Trigger


class SIGSettings(AttackSettings):
    """SIG settings: delta 40/255 when poisoning and 60/255 at test time, frequency 6 (the D-ST code)."""

    rate: float = Field(0.1, gt=0, le=1, description="fraction of the TARGET CLASS's training images poisoned")
    delta: float = Field(40 / 255, gt=0, le=1, description="sinusoid amplitude when poisoning (0-1 scale)")
    test_delta: float = Field(60 / 255, gt=0, le=1, description="sinusoid amplitude at test time")
    frequency: float = Field(6, gt=0, description="periods across the image width")


def sinusoid(image_shape: tuple[int, int, int], delta: float, frequency: float) -> torch.Tensor:
    """delta * sin(2 pi j f / m) for column j of m, the same in every row and channel."""
    c, h, w = image_shape
    j = torch.arange(w, dtype=torch.float64)
    row = delta * torch.sin(2 * math.pi * j * frequency / w)
    return row.float().expand(c, h, w).clone()


@ATTACKS.register("sig", title="SIG")
class SIG(BackdoorAttack):
    """SIG clean-label sinusoid (delta 40 train / 60 test, f 6); rate = fraction of the TARGET CLASS

    SIG: clean-label; only target-class training images get the signal, labels are never changed."""

    Settings = SIGSettings
    settings: SIGSettings
    clean_label = True
    rate_semantics = "fraction of the target class's training images (clean-label)"

    def build_trigger(self, image_shape: tuple[int, int, int]) -> Trigger:
        s = self.settings
        return TrainTestTrigger(AdditiveTrigger(sinusoid(image_shape, s.delta, s.frequency)),
                                AdditiveTrigger(sinusoid(image_shape, s.test_delta, s.frequency)))
