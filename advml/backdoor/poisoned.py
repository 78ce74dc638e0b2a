"""PoisonedDataset: a base dataset + poisoned indices + a trigger + new labels, applied lazily per batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advml.backdoor.triggers import Trigger
from advml.data.base import ImageDataset


class PoisonedDataset(ImageDataset):
    """Returns (image, label) like any dataset; the trigger is applied batch-wise to flagged samples."""

    def __init__(self, base: ImageDataset, poison_indices: Tensor, trigger: Trigger, poisoned_labels: Tensor,
                 *, train: bool = True, settings: dict[str, Any] | None = None) -> None:
        n = len(base)
        idx = torch.as_tensor(poison_indices, dtype=torch.long).unique()
        if idx.numel() != torch.as_tensor(poison_indices).numel():
            raise ValueError("poison_indices contain duplicates")
        flags = torch.zeros(n, dtype=torch.bool)
        flags[idx] = True
        labels = base.labels.clone()
        labels[idx] = torch.as_tensor(poisoned_labels, dtype=torch.long)
        self.base, self.trigger, self.train = base, trigger, train
        self.classes = base.classes
        self.poison_flags, self.poison_indices = flags, idx
        self.original_labels = base.labels
        self._labels = labels
        self.settings = dict(settings or {})

    @property
    def labels(self) -> Tensor:
        return self._labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.base.image_shape

    def get_batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        x, _ = self.base.get_batch(index)
        flags = self.poison_flags[index]
        if flags.any():
            x[flags] = self.trigger.apply(x[flags], train=self.train)
        return x, self._labels[index]

    def poisoned_pairs(self, limit: int | None = None) -> tuple[Tensor, Tensor]:
        """(clean, triggered) images of the poisoned samples (the first `limit`), for stealth metrics."""
        idx = self.poison_indices[:limit]
        clean, _ = self.base.get_batch(idx)
        return clean, self.trigger.apply(clean, train=self.train)
