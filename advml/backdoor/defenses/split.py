"""The split of a training set into D_c (clean), D_u (uncertain) and D_p (poisoned) index sets, and the split by a
per-sample score (the SD module's by FCT; the filters' by their own scores)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advml.errors import ConfigError, InputError
from advml.metrics import detection


@dataclass
class Split:
    """Index sets of the training data: D_c (clean), D_p (poisoned), D_u (uncertain), and the scores."""

    clean: Tensor
    poisoned: Tensor
    uncertain: Tensor
    scores: Tensor

    def flags(self) -> Tensor:
        """Bool per sample: in D_p."""
        out = torch.zeros(self.scores.numel(), dtype=torch.bool)
        out[self.poisoned] = True
        return out

    def metrics(self, truth: Tensor) -> dict[str, float]:
        """Detection quality against ground-truth poison flags: precision/recall of D_p, D_c's poisoned share."""
        truth = truth.bool()
        if truth.numel() != self.scores.numel():
            raise InputError(f"{truth.numel()} poison flags for {self.scores.numel()} scored samples")
        return {**detection(self.flags(), truth),
                "clean_split_poison_rate": float(truth[self.clean].double().mean()) if self.clean.numel() else 0.0,
                "clean_split_tie_share": self.tie_share()}

    def tie_share(self) -> float:
        """Fraction of all samples scoring exactly D_c's highest score: above alpha_c, D_c is a seeded random draw
        from a tied set (collapsed features all score 0), not a ranking."""
        if not self.clean.numel():
            return 0.0
        return float((self.scores == self.scores[self.clean].max()).double().mean())

    def tensors(self) -> dict[str, Tensor]:
        """For saving: the three index sets and the scores."""
        return {"clean": self.clean, "poisoned": self.poisoned, "uncertain": self.uncertain, "scores": self.scores}


def split_by_score(scores: Tensor, clean_ratio: float = 0.2, poison_ratio: float = 0.05, *, seed: int = 0) -> Split:
    """Sort ascending: the floor(alpha_c N) lowest -> D_c, the floor(alpha_p N) highest -> D_p, the rest D_u.

    Equal scores are ordered by a seeded random permutation, not by position: a model whose features collapse gives
    many samples the same FCT score (0), and a class-sorted file would otherwise put whole classes into D_c (seen on
    all 50,000 CIFAR-10 images: D_c held classes 0-2 only). The official threshold (D_c = scores <= the score at rank
    floor(alpha_c N)) would instead take every tied sample. Without ties both give the same sets."""
    n = scores.numel()
    if not 0 < clean_ratio < 1 or not 0 < poison_ratio < 1 or clean_ratio + poison_ratio > 1:
        raise ConfigError(f"need 0 < ratios < 1 and clean_ratio + poison_ratio <= 1, got {clean_ratio}, "
                          f"{poison_ratio}")
    if not torch.isfinite(scores).all():
        raise InputError("FCT scores contain NaN or inf")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    order = perm[torch.argsort(scores.cpu()[perm], stable=True)]
    nc, np_ = int(clean_ratio * n), int(poison_ratio * n)
    return Split(order[:nc].sort().values, order[n - np_:].sort().values, order[nc:n - np_].sort().values,
                 scores.clone())
