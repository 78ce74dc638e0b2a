"""BackdoorAttack: settings + a trigger + which samples to poison and how to relabel them."""

from __future__ import annotations

from typing import ClassVar, Literal, cast

import torch
from pydantic import Field
from torch import Tensor

from advml.backdoor.poisoned import PoisonedDataset
from advml.backdoor.triggers import Trigger
from advml.component import Component
from advml.config import Settings
from advml.data.base import ImageDataset, as_image_dataset
from advml.errors import ConfigError
from advml.registry import Registry


class AttackSettings(Settings):
    """Settings every backdoor attack has."""

    target: int = Field(0, ge=0, description="target label (all2one)")
    rate: float = Field(0.1, gt=0, le=1, description="poisoning rate: fraction of the whole training set")
    mode: Literal["all2one", "all2all"] = Field("all2one", description="all2one: y -> target; all2all: y -> y+1 mod K")


class BackdoorAttack(Component):
    """Base class; a subclass sets `name`, `Settings` and implements `build_trigger`."""

    Settings: ClassVar[type[AttackSettings]] = AttackSettings
    settings: AttackSettings
    clean_label: ClassVar[bool] = False
    rate_semantics: ClassVar[str] = "fraction of the whole training set, drawn from non-target samples (all2one)"

    def build_trigger(self, image_shape: tuple[int, int, int]) -> Trigger:
        """The trigger for images of this shape."""
        raise NotImplementedError

    def trigger_for(self, data: ImageDataset | tuple[int, int, int]) -> Trigger:
        """The trigger sized for `data` or for a (C,H,W) shape (built once per shape)."""
        cache = self.__dict__.setdefault("_triggers", {})
        shape = cast(tuple[int, int, int], tuple(data)) if isinstance(data, tuple) else data.image_shape
        if shape not in cache:
            cache[shape] = self.build_trigger(shape)
        return cache[shape]

    def _check_target(self, num_classes: int) -> None:
        t = self.settings.target
        if not 0 <= t < num_classes:
            raise ConfigError(f"target label {t} is outside [0, {num_classes}) for a {num_classes}-class dataset")

    def target_labels(self, labels: Tensor, num_classes: int) -> Tensor:
        """The label each sample gets once poisoned."""
        if self.clean_label:
            return labels.clone()
        if self.settings.mode == "all2all":
            return (labels + 1) % num_classes
        return torch.full_like(labels, self.settings.target)

    def eligible(self, labels: Tensor) -> Tensor:
        """Which samples may be poisoned (bool mask)."""
        if self.clean_label:
            return labels == self.settings.target
        if self.settings.mode == "all2all":
            return torch.ones_like(labels, dtype=torch.bool)
        return labels != self.settings.target

    def poison_count(self, labels: Tensor) -> int:
        """How many training samples get poisoned: round(rate * N), N the set's size (target class if clean-label)."""
        n = int(self.eligible(labels).sum()) if self.clean_label else labels.numel()
        return round(self.settings.rate * n)

    def select(self, labels: Tensor, seed: int) -> Tensor:
        """The poisoned indices (sorted): a pure function of the labels, the settings and the seed."""
        pool = self.eligible(labels).nonzero().flatten()
        k = self.poison_count(labels)
        if k < 1:
            raise ConfigError(f"rate {self.settings.rate} poisons no sample of {labels.numel()}; raise the rate")
        if k > pool.numel():
            raise ConfigError(f"rate {self.settings.rate} asks for {k} poisoned samples but only {pool.numel()} "
                              f"are eligible ({self.rate_semantics})")
        gen = torch.Generator().manual_seed(seed)
        return pool[torch.randperm(pool.numel(), generator=gen)[:k]].sort().values

    def prepare(self, train: ImageDataset, seed: int) -> None:
        """Work on the clean training data that must precede poisoning (a surrogate model, a generated
        trigger); nothing for most attacks. `poison` calls it."""

    def poison_images(self, x: Tensor, y: Tensor) -> Tensor:
        """The training-time poisoned version of every given clean image (for stealth tables and figures)."""
        return self.trigger_for(cast(tuple[int, int, int], tuple(x.shape[1:]))).apply(x, train=True)

    def poison(self, train: ImageDataset, *, seed: int = 0) -> PoisonedDataset:
        """The poisoned training set."""
        train = as_image_dataset(train)
        self._check_target(train.num_classes)
        self.prepare(train, seed)
        idx = self.select(train.labels, seed)
        new = self.target_labels(train.labels[idx], train.num_classes)
        return PoisonedDataset(train, idx, self.trigger_for(train), new, train=True, settings=self.describe())

    def backdoor_test_set(self, test: ImageDataset) -> PoisonedDataset:
        """Every test image whose label is not the target (all2one; all of them for all2all), triggered, with
        the attack's target labels, so that ASR = accuracy on this set."""
        test = as_image_dataset(test)
        self._check_target(test.num_classes)
        if self.settings.mode == "all2all":
            keep = torch.ones_like(test.labels, dtype=torch.bool)
        else:
            keep = test.labels != self.settings.target
        sub = test.subset(keep.nonzero().flatten())
        idx = torch.arange(len(sub))
        labels = sub.labels.clone()
        new = (labels + 1) % test.num_classes if self.settings.mode == "all2all" and not self.clean_label \
            else torch.full_like(labels, self.settings.target)
        return PoisonedDataset(sub, idx, self.trigger_for(test), new, train=False, settings=self.describe())


ATTACKS: Registry[type[BackdoorAttack]] = Registry("attack")  # each attack registers itself at its class
