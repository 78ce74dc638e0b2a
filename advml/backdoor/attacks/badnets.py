"""BadNets (Gu et al. 2017): a small patch stamped on the image; all2one or all2all."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from advml.backdoor.attacks.base import ATTACKS, AttackSettings, BackdoorAttack
from advml.backdoor.triggers import CORNERS, MaskTrigger, Trigger
from advml.errors import ConfigError


class BadNetsSettings(AttackSettings):
    """BadNets settings; defaults are BackdoorBench's (3x3 white square at the bottom-right corner)."""

    pattern: Literal["square", "checkerboard", "ebd_grid", "file"] = Field(
        "square", description="the patch: square; checkerboard (BackdoorBench's trigger_image_grid.png); ebd_grid "
        "(EBD's gridTrigger: the checkerboard with its pixel facing the image centre black); file")
    size: int = Field(3, ge=1, description="patch side in pixels")
    margin: int = Field(0, ge=0, description="distance from the image border in pixels")
    corner: str = Field("bottom_right", description=f"one of {', '.join(CORNERS)}")
    image: str | None = Field(None, description="trigger image file (pattern: file), same size as the data")
    mask: str | None = Field(None, description="mask image file; default: the trigger image's non-zero pixels")


@ATTACKS.register("badnets", title="BadNets")
class BadNets(BackdoorAttack):
    """BadNets patch trigger (square/checkerboard/file), all2one or all2all; rate = fraction of the whole training set

    BadNets: a 3x3 white square (or a checkerboard, EBD's grid, or any patch image + mask) at a corner."""

    Settings = BadNetsSettings
    settings: BadNetsSettings

    def build_trigger(self, image_shape: tuple[int, int, int]) -> Trigger:
        s = self.settings
        if s.pattern == "file":
            if not s.image:
                raise ConfigError("badnets pattern 'file' needs image=<path to the trigger image>")
            return MaskTrigger.from_files(s.image, s.mask, image_shape)
        if s.image or s.mask:
            raise ConfigError("badnets image/mask files need pattern: file")
        if s.pattern in ("checkerboard", "ebd_grid"):
            return MaskTrigger.checkerboard(image_shape, s.size, s.corner, s.margin,
                                            inner=0.0 if s.pattern == "ebd_grid" else 1.0)
        return MaskTrigger.square(image_shape, s.size, 1.0, s.corner, s.margin)
