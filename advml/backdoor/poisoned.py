"""PoisonedDataset: a base dataset + poisoned indices + a trigger + new labels, applied lazily per batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advml.backdoor.triggers import Trigger
from advml.data.base import ImageDataset
from advml.errors import ConfigError, InputError


class PoisonedDataset(ImageDataset):
    """Returns (image, label) like any dataset; the trigger is applied batch-wise to flagged samples."""

    def __init__(self, base: ImageDataset, poison_indices: Tensor, trigger: Trigger, poisoned_labels: Tensor,
                 *, train: bool = True, settings: dict[str, Any] | None = None,
                 perturbed: Tensor | None = None) -> None:
        """`perturbed` (optional): precomputed images for the sorted poison indices that replace the clean
        ones before the trigger is applied (e.g. the adversarial images of the clean-label attack)."""
        n = len(base)
        idx = torch.as_tensor(poison_indices, dtype=torch.long).unique()
        if idx.numel() != torch.as_tensor(poison_indices).numel():
            raise ConfigError("poison_indices contain duplicates")
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
        if perturbed is not None and (perturbed.shape[0] != idx.numel() or not perturbed.is_floating_point()):
            raise InputError(f"perturbed must be float with one image per poisoned index ({idx.numel()})")
        self.perturbed = perturbed
        self._row = torch.full((n,), -1, dtype=torch.long)
        self._row[idx] = torch.arange(idx.numel())

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
            src = self.perturbed[self._row[index[flags]]] if self.perturbed is not None else x[flags]
            x[flags] = self.trigger.apply(src, train=self.train)
        return x, self._labels[index]

    def poisoned_pairs(self, limit: int | None = None) -> tuple[Tensor, Tensor]:
        """(clean, triggered) images of the poisoned samples (the first `limit`), for stealth metrics."""
        idx = self.poison_indices[:limit]
        clean, _ = self.base.get_batch(idx)
        src = self.perturbed[:len(idx)] if self.perturbed is not None else clean
        return clean, self.trigger.apply(src, train=self.train)
