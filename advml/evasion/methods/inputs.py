"""Input-transformation methods: DI (random resize and pad), SI (scaled copies), Admix (mix in other classes)."""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
from torch import Tensor
from torch.nn import functional as F

from advml.errors import ConfigError
from advml.evasion.base import METHODS, IterativeAttack, Method


@METHODS.register("di", "diverse inputs: random resize in [H, H*330/299) and pad, p 0.7, a draw per copy")
class DI(Method):
    """Diverse inputs (Xie et al. 2019) as the RAP code's `DI`: per copy, resize to a random size in
    [H, H*rate) (nearest) and zero-pad at a random offset to floor(H*rate), with probability p. The padded
    image goes to the model, as in the RAP code (its 330x330 inputs; models that pool adaptively accept it);
    `resize_back` resizes it to H x W for models that need a fixed size (TransferAttack's DIM does, bilinear).
    Non-square inputs: the same draw scales both sides (height and width each get their own padding)."""

    def __init__(self, prob: float = 0.7, rate: float = 330 / 299, resize_back: bool = False) -> None:
        if not 0 <= prob <= 1 or rate < 1:
            raise ConfigError(f"di needs 0 <= prob <= 1 and rate >= 1, got {prob}, {rate}")
        self.prob, self.rate, self.resize_back = prob, rate, resize_back

    def padded_size(self, side: int) -> int:
        """The side after padding: floor(side * rate), at least side + 1 (330 for 299)."""
        return max(math.floor(side * self.rate + 1e-9), side + 1)

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
        return torch.stack([rnd_h, rnd_w, pad_top, pad_left, (u[:, 3] < self.prob).double()], 1).long()

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        """One copy transformed with one row of `draw`."""
        rnd_h, rnd_w, top, left, applied = params.tolist()
        if not applied:
            return x
        h, w = x.shape[-2:]
        top_h, top_w = self.padded_size(h), self.padded_size(w)
        resized = F.interpolate(x, size=(rnd_h, rnd_w), mode="nearest")
        out = F.pad(resized, (left, top_w - rnd_w - left, top, top_h - rnd_h - top))
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False) if self.resize_back else out

    def transform(self, attack: IterativeAttack, parts: list[Tensor]) -> list[Tensor]:
        params = self.draw(attack, len(parts), *parts[0].shape[-2:])
        return [self.apply(x, p) for x, p in zip(parts, params)]


def scale_copies(x: Tensor, y: Tensor, copies: int) -> tuple[Tensor, Tensor]:
    """`copies` copies x / 2^j, j = 0..copies-1, copy-major (all images at 1, then all at 1/2, ...)."""
    scales = torch.tensor([0.5**j for j in range(copies)], device=x.device, dtype=x.dtype)
    return (x[None] * scales.view(-1, *[1] * x.dim())).flatten(0, 1), y.repeat(copies)


@METHODS.register("si", "scale invariance: 5 copies x/2^i")
class SI(Method):
    """Scale invariance (Lin et al. 2020): m copies x / 2^i, i = 0..m-1."""

    def __init__(self, copies: int = 5) -> None:
        if copies < 1:
            raise ConfigError(f"si needs at least 1 copy, got {copies}")
        self.copies = copies

    def expand(self, attack: IterativeAttack, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return scale_copies(x, y, self.copies)


@METHODS.register("admix", "Admix: 3 clean other-class images added at 0.2, each mix in 5 scales x/2^j")
class Admix(Method):
    """Admix (Wang et al. 2021) as the RAP code runs it (`--m1 3 --m2 5 --strength 0.2`): each image is mixed
    with `copies` (m1) clean images of other true classes, drawn from the batch (the RAP code draws them from
    the whole 1,000-image set), and each mixed image is scaled into `scales` (m2) copies 1/2^j as SI does: 15
    gradient terms. The added term is a constant: 'add' (the RAP code) adds clip(x + 0.2 x', 0, 1) - x, so
    the gradient passes the clip as the identity; 'mix' (the Admix paper, TransferAttack) adds 0.2 x' unclipped.
    `pool: adversarial` takes the partners from the batch's current adversarial images (detached), as
    TransferAttack does, instead of the clean ones."""

    def __init__(self, copies: int = 3, scales: int = 5, strength: float = 0.2, mode: str = "add",
                 pool: Literal["clean", "adversarial"] = "clean") -> None:
        if mode not in ("add", "mix") or pool not in ("clean", "adversarial") or copies < 1 or scales < 1 \
                or strength < 0:
            raise ConfigError(f"admix needs mode add|mix, pool clean|adversarial, copies >= 1, scales >= 1, "
                              f"strength >= 0; got {mode}, {pool}, {copies}, {scales}, {strength}")
        self.copies, self.scales, self.strength, self.mode, self.pool = copies, scales, strength, mode, pool

    def draw(self, attack: IterativeAttack, true: Tensor) -> Tensor:
        """(copies, N) partner indices: for each copy and image, a uniformly drawn image of another class."""
        n = true.numel()
        other = true[None, :] != true[:, None]  # (n, n): candidates of another class
        if not other.any(1).all():
            raise ConfigError("admix needs, for every image, another image of a different class in the batch")
        scores = attack.rand(self.copies, n, n, device=true.device).masked_fill(~other[None], -1.0)
        return scores.argmax(-1)

    def mix(self, attack: IterativeAttack, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if attack.true_labels is None or x.shape[0] != attack.true_labels.numel():
            raise ConfigError("admix must come before other methods that add input copies")
        partners = self.draw(attack, attack.true_labels)
        pool = cast(Tensor, attack.clean) if self.pool == "clean" else x.detach()  # set during the call
        base = x.detach()[None]
        added = self.strength * pool[partners]  # (copies, n, ...)
        if self.mode == "add":
            added = (base + added).clamp(0, 1) - base
        return (x[None] + added).flatten(0, 1), y.repeat(self.copies)

    def expand(self, attack: IterativeAttack, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return scale_copies(x, y, self.scales)
