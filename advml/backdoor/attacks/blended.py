"""Blended (Chen et al. 2017): x' = (1 - a) x + a * pattern, with Hello Kitty or the strip pattern."""

from __future__ import annotations

import torch
from pydantic import Field

from advml.backdoor.attacks.base import ATTACKS, AttackSettings, BackdoorAttack
from advml.backdoor.triggers import MaskTrigger, TrainTestTrigger, Trigger, load_pattern

KITTY = "triggers/d-st/hello_kitty.png"
STRIP = "triggers/d-st/signal_cifar10_mask.npy"


class BlendedSettings(AttackSettings):
    """Blend settings; alpha 0.2 at train and test as in the D-ST paper's code and BackdoorBench."""

    image: str = Field(KITTY, description="pattern image or .npy (path; the default ships in the package)")
    alpha: float = Field(0.2, gt=0, le=1, description="blend weight when poisoning the training set")
    test_alpha: float = Field(0.2, gt=0, le=1, description="blend weight at test time")


class StripSettings(BlendedSettings):
    """Blend-Strip: the strip pattern of NAD / the D-ST code (vertical stripes, blended in every channel)."""

    image: str = Field(STRIP, description="pattern image or .npy (path; the default ships in the package)")


@ATTACKS.register("blend_kitty", title="Blend-Kitty")
class Blended(BackdoorAttack):
    """Blended: Hello Kitty alpha-blended (alpha 0.2); rate = fraction of the whole training set

    Blended: the pattern (Hello Kitty by default) resized to the images and alpha-blended."""

    Settings = BlendedSettings
    settings: BlendedSettings

    def build_trigger(self, image_shape: tuple[int, int, int]) -> Trigger:
        s = self.settings
        pattern = load_pattern(s.image, image_shape)
        mk = lambda a: MaskTrigger(pattern, torch.full((1, *image_shape[1:]), a))  # noqa: E731
        return mk(s.alpha) if s.alpha == s.test_alpha else TrainTestTrigger(mk(s.alpha), mk(s.test_alpha))


@ATTACKS.register("blend_strip", title="Blend-Strip")
class BlendStrip(Blended):
    """Blended: strip pattern alpha-blended (alpha 0.2); rate = fraction of the whole training set

    Blend-Strip: the strip pattern alpha-blended."""

    Settings = StripSettings
    settings: StripSettings
