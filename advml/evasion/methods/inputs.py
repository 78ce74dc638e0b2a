"""Input-transformation methods: DI (random resize and pad), SI (scaled copies), Admix (mix in other classes)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from advml.errors import ConfigError
from advml.evasion.base import IterativeAttack, Method


class DI(Method):
    """Diverse inputs (Xie et al. 2019): with probability p, resize to a random size in [H, H*rate) and
    zero-pad at a random offset to H*rate, then resize back to H so that any model accepts it (the RAP
    code feeds the padded 330x330 image to models that pool adaptively: the same up to that last resize)."""

    name = "di"

    def __init__(self, prob: float = 0.7, rate: float = 330 / 299) -> None:
        if not 0 <= prob <= 1 or rate < 1:
            raise ConfigError(f"di needs 0 <= prob <= 1 and rate >= 1, got {prob}, {rate}")
        self.prob, self.rate = prob, rate

    def transform(self, attack: IterativeAttack, x: Tensor) -> Tensor:
        if float(attack.rand(1)) >= self.prob:
            return x
        h = x.shape[-1]
        top = max(int(h * self.rate), h + 1)
        rnd = int(h + attack.rand(1) * (top - h))
        rnd = min(rnd, top - 1)
        resized = F.interpolate(x, size=(rnd, rnd), mode="nearest")
        pad = top - rnd
        left, up = int(attack.rand(1) * (pad + 1)), int(attack.rand(1) * (pad + 1))
        left, up = min(left, pad), min(up, pad)
        padded = F.pad(resized, (left, pad - left, up, pad - up))
        return F.interpolate(padded, size=(h, x.shape[-2]), mode="nearest") if top != h else padded


class SI(Method):
    """Scale invariance (Lin et al. 2020): m copies x / 2^i, i = 0..m-1."""

    name = "si"

    def __init__(self, copies: int = 5) -> None:
        if copies < 1:
            raise ConfigError(f"si needs at least 1 copy, got {copies}")
        self.copies = copies

    def expand(self, attack: IterativeAttack, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        scales = torch.tensor([0.5**i for i in range(self.copies)], device=x.device, dtype=x.dtype)
        return (x[None] * scales.view(-1, 1, 1, 1, 1)).flatten(0, 1), y.repeat(self.copies)


class Admix(Method):
    """Admix (Wang et al. 2021): for each image, `copies` images of other true classes from the batch are
    mixed in with strength 0.2. 'add' is the RAP code's x + 0.2 x' clipped to [0,1]; 'mix' is the Admix
    paper's x + 0.2 x' left unclipped (SI's scaling follows when composed)."""

    name = "admix"

    def __init__(self, copies: int = 3, strength: float = 0.2, mode: str = "add") -> None:
        if mode not in ("add", "mix") or copies < 1 or strength < 0:
            raise ConfigError(f"admix needs mode add|mix, copies >= 1, strength >= 0; got {mode}, {copies}, "
                              f"{strength}")
        self.copies, self.strength, self.mode = copies, strength, mode

    def expand(self, attack: IterativeAttack, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        true = attack.true_labels
        n = true.numel()
        if x.shape[0] != n:
            raise ConfigError("admix must come before other methods that add input copies")
        other = true[None, :] != true[:, None]  # (n, n): candidates of another class
        if not other.any(1).all():
            raise ConfigError("admix needs, for every image, another image of a different class in the batch")
        scores = attack.rand(self.copies, n, n, device=x.device).masked_fill(~other[None], -1.0)
        partners = scores.argmax(-1)  # (copies, n): a random other-class image per copy
        mixed = x[None] + self.strength * x[partners]
        if self.mode == "add":
            mixed = mixed.clamp(0, 1)
        return mixed.flatten(0, 1), y.repeat(self.copies)
