"""Input-transformation methods: DI (random resize and pad), SI (scaled copies), Admix (mix in other classes)."""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
from pydantic import Field
from torch import Tensor
from torch.nn import functional as F

from advml.config import Settings
from advml.errors import ConfigError
from advml.evasion.base import METHODS, IterativeAttack, Method


class DISettings(Settings):
    """DI's settings (the RAP code's: p 0.7, 330/299)."""

    prob: float = Field(0.7, ge=0, le=1, description="probability of transforming a copy")
    rate: float = Field(330 / 299, ge=1, description="padded size / image size")
    resize_back: bool = Field(False, description="resize the padded image back to H x W (bilinear)")


@METHODS.register("di", "diverse inputs: random resize in [H, H*330/299) and pad, p 0.7, a draw per copy")
class DI(Method):
    """Diverse inputs (Xie et al. 2019) as the RAP code's `DI`: per copy, resize to a random size in
    [H, H*rate) (nearest) and zero-pad at a random offset to floor(H*rate), with probability p. The padded
    image goes to the model, as in the RAP code (its 330x330 inputs; models that pool adaptively accept it);
    `resize_back` resizes it to H x W for models that need a fixed size (TransferAttack's DIM does, bilinear).
    Non-square inputs: the same draw scales both sides (height and width each get their own padding)."""

    Settings = DISettings
    settings: DISettings

    def padded_size(self, side: int) -> int:
        """The side after padding: floor(side * rate), at least side + 1 (330 for 299)."""
        return max(math.floor(side * self.settings.rate + 1e-9), side + 1)

    def draw(self, attack: IterativeAttack, copies: int, h: int, w: int) -> Tensor:
        """Per copy (rows): resized height, resized width, top pad, left pad, applied (0/1) — the official
        np.random.randint(H, top), randint(0, top - rnd) twice, rand() <= p (< here: the same for float draws, and
        never at p = 0), from the attack's generator."""
        u = attack.rand(copies, 4).double()
        top_h, top_w = self.padded_size(h), self.padded_size(w)
        rnd_h = h + (u[:, 0] * (top_h - h)).floor()
        rnd_w = w + (u[:, 0] * (top_w - w)).floor()
        pad_top = (u[:, 1] * (top_h - rnd_h)).floor()
        pad_left = (u[:, 2] * (top_w - rnd_w)).floor()
        return torch.stack([rnd_h, rnd_w, pad_top, pad_left, (u[:, 3] < self.settings.prob).double()], 1).long()

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        """One copy transformed with one row of `draw`."""
        rnd_h, rnd_w, top, left, applied = params.tolist()
        if not applied:
            return x
        h, w = x.shape[-2:]
        top_h, top_w = self.padded_size(h), self.padded_size(w)
        resized = F.interpolate(x, size=(rnd_h, rnd_w), mode="nearest")
        out = F.pad(resized, (left, top_w - rnd_w - left, top, top_h - rnd_h - top))
        if not self.settings.resize_back:
            return out
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)

    def transform(self, attack: IterativeAttack, parts: list[Tensor]) -> list[Tensor]:
        params = self.draw(attack, len(parts), *parts[0].shape[-2:])
        return [self.apply(x, p) for x, p in zip(parts, params)]


def scale_copies(x: Tensor, y: Tensor, copies: int) -> tuple[Tensor, Tensor]:
    """`copies` copies x / 2^j, j = 0..copies-1, copy-major (all images at 1, then all at 1/2, ...)."""
    scales = torch.tensor([0.5**j for j in range(copies)], device=x.device, dtype=x.dtype)
    return (x[None] * scales.view(-1, *[1] * x.dim())).flatten(0, 1), y.repeat(copies)


class SISettings(Settings):
    """SI's settings."""

    copies: int = Field(5, ge=1, description="scaled copies x / 2^i, i = 0..copies-1")


@METHODS.register("si", "scale invariance: 5 copies x/2^i")
class SI(Method):
    """Scale invariance (Lin et al. 2020): m copies x / 2^i, i = 0..m-1."""

    Settings = SISettings
    settings: SISettings

    def expand(self, attack: IterativeAttack, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return scale_copies(x, y, self.settings.copies)


class AdmixSettings(Settings):
    """Admix's settings (the RAP code's `--m1 3 --m2 5 --strength 0.2`)."""

    copies: int = Field(3, ge=1, description="m1: mixed images per image, each with another class's image")
    scales: int = Field(5, ge=1, description="m2: scaled copies 1/2^j of each mixed image")
    strength: float = Field(0.2, ge=0, description="weight of the added image")
    mode: Literal["add", "mix"] = Field("add", description="add: clip(x + s x', 0, 1) (the RAP code); mix: "
                                        "x + s x' unclipped (the Admix paper, TransferAttack)")
    pool: Literal["clean", "adversarial"] = Field("clean", description="partners: the clean images (official) "
                                                  "or the batch's current adversarial ones (TransferAttack)")


@METHODS.register("admix", "Admix: 3 clean other-class images added at 0.2, each mix in 5 scales x/2^j")
class Admix(Method):
    """Admix (Wang et al. 2021) as the RAP code runs it (`--m1 3 --m2 5 --strength 0.2`): each image is mixed
    with `copies` (m1) clean images of other true classes, drawn from the batch (the RAP code draws them from
    the whole 1,000-image set), and each mixed image is scaled into `scales` (m2) copies 1/2^j as SI does: 15
    gradient terms. The added term is a constant: 'add' (the RAP code) adds clip(x + 0.2 x', 0, 1) - x, so
    the gradient passes the clip as the identity; 'mix' (the Admix paper, TransferAttack) adds 0.2 x' unclipped.
    `pool: adversarial` takes the partners from the batch's current adversarial images (detached), as
    TransferAttack does, instead of the clean ones."""

    Settings = AdmixSettings
    settings: AdmixSettings

    def draw(self, attack: IterativeAttack, true: Tensor) -> Tensor:
        """(copies, N) partner indices: for each copy and image, a uniformly drawn image of another class."""
        n = true.numel()
        other = true[None, :] != true[:, None]  # (n, n): candidates of another class
        if not other.any(1).all():
            raise ConfigError("admix needs, for every image, another image of a different class in the batch")
        scores = attack.rand(self.settings.copies, n, n, device=true.device).masked_fill(~other[None], -1.0)
        return scores.argmax(-1)

    def mix(self, attack: IterativeAttack, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if attack.true_labels is None or x.shape[0] != attack.true_labels.numel():
            raise ConfigError("admix must come before other methods that add input copies")
        s = self.settings
        partners = self.draw(attack, attack.true_labels)
        pool = cast(Tensor, attack.clean) if s.pool == "clean" else x.detach()  # set during the call
        base = x.detach()[None]
        added = s.strength * pool[partners]  # (copies, n, ...)
        if s.mode == "add":
            added = (base + added).clamp(0, 1) - base
        return (x[None] + added).flatten(0, 1), y.repeat(s.copies)

    def expand(self, attack: IterativeAttack, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return scale_copies(x, y, self.settings.scales)
