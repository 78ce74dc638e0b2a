"""Model selection without test labels for defenses that train on a split (D-BR, D-ST): part of D_c and of D_p is
held out, and each epoch is scored by held-out acc(D_c) - acc(D_p)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from advml.backdoor.defenses.base import DefenseSettings
from advml.backdoor.defenses.split import Split
from advml.data.base import ImageDataset
from advml.errors import ConfigError
from advml.stats import wilson


class HoldoutSettings(DefenseSettings):
    """Model selection without test labels, for defenses that train on the SD split (D-BR, D-ST): part of D_c and
    of D_p is held out and each epoch is scored by held-out acc(D_c) - acc(D_p) (the official code's ACC - ASR,
    which reads the test set)."""

    holdout_fraction: float = Field(0.1, ge=0, lt=1, description="share of D_c and of D_p kept out of training "
                                    "to pick the epoch with the best held-out acc(D_c) - acc(D_p)")
    selection: Literal["pessimistic", "point"] = Field(
        "pessimistic", description="rank epochs by the 95 % Wilson lower bound of held-out acc(D_c) minus the upper "
        "bound of acc(D_p) (pessimistic), or by the two point estimates (point)")


def holdout(indices: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split an index set into (train, held-out) at random; the held-out part is used for model selection."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"holdout_fraction must be in [0, 1), got {fraction}")
    k = round(fraction * indices.numel())
    perm = torch.randperm(indices.numel(), generator=torch.Generator().manual_seed(seed))
    return indices[perm[k:]].sort().values, indices[perm[:k]].sort().values


def selection_score(clean_acc: float, n_clean: int, poison_acc: float, n_poison: int, *,
                    pessimistic: bool = True) -> float:
    """Held-out ACC - ASR of one epoch; pessimistic: the worst values the 95 % intervals allow, so that 3 of 50
    held-out poisons still reaching the target does not rank level with 0 of 50 when D_p is small."""
    if not pessimistic:
        return clean_acc - poison_acc
    return wilson(round(clean_acc * n_clean), n_clean)[0] - wilson(round(poison_acc * n_poison), n_poison)[1]


@dataclass
class HeldOut:
    """D_c and D_p minus their held-out parts (to train on), the held-out sets as evals, and the epoch score
    (None, and no evals, when either held-out part is empty)."""

    clean: Tensor
    poisoned: Tensor
    evals: dict[str, ImageDataset]
    select: Callable[[dict[str, Any]], float] | None


def hold_out(train: ImageDataset, split: Split, settings: HoldoutSettings, seed: int) -> HeldOut:
    """Hold out `settings.holdout_fraction` of D_c and of D_p (seeded) for model selection."""
    p_train, p_hold = holdout(split.poisoned, settings.holdout_fraction, seed)
    c_train, c_hold = holdout(split.clean, settings.holdout_fraction, seed + 1)
    if not (p_hold.numel() and c_hold.numel()):
        return HeldOut(c_train, p_train, {}, None)
    n_c, n_p, pessimistic = c_hold.numel(), p_hold.numel(), settings.selection == "pessimistic"
    return HeldOut(c_train, p_train, {"holdout_clean": train.subset(c_hold), "holdout_poison": train.subset(p_hold)},
                   lambda r: selection_score(r["holdout_clean"], n_c, r["holdout_poison"], n_p,
                                             pessimistic=pessimistic))
