"""Standard training: no sample is poisoned (the baseline row of every table)."""

from __future__ import annotations

import torch
from torch import Tensor

from advml.backdoor.attacks.base import ATTACKS, BackdoorAttack
from advml.backdoor.triggers import Trigger
from advml.data.base import ImageDataset


class IdentityTrigger(Trigger):
    """Leaves images as they are."""

    def _apply(self, x: Tensor, train: bool) -> Tensor:
        return x.clone()


@ATTACKS.register("none", title="Standard training")
class NoAttack(BackdoorAttack):
    """No attack (standard training): the baseline row; no ASR

    No attack: the clean training set; runs report clean accuracy and no ASR."""

    def build_trigger(self, image_shape: tuple[int, int, int]) -> Trigger:
        return IdentityTrigger()

    def select(self, labels: Tensor, seed: int) -> Tensor:
        return torch.empty(0, dtype=torch.long)

    def backdoor_test_set(self, test: ImageDataset) -> None:  # type: ignore[override]
        """There is no trigger to test."""
        return None
