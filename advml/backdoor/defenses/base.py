"""Defense: settings in, a purified (or securely trained) model plus a report out. A defense sees the
untrusted training set only — never the test set, never the ground-truth poison flags."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advml.backdoor.defenses.split import Split
from advml.component import Component
from advml.config import Settings
from advml.data.base import ImageDataset, SubsetDataset
from advml.errors import ConfigError
from advml.registry import Registry
from advml.train import LossFn, TrainConfig, Trainer, cross_entropy
from advml.utils.precision import AmpSetting


class DefenseSettings(Settings):
    """Settings every defense has (none so far); subclasses add theirs."""


@dataclass
class DefenseContext:
    """What a defense may use besides the training data."""

    new_model: Callable[..., nn.Module]  # new_model(arch=None): a fresh model of the run's (or that) architecture
    backdoored: nn.Module | None = None  # the model trained on the untrusted data (defenses that purify one)
    seed: int = 0
    device: str = "auto"
    amp: AmpSetting = "auto"  # the run's train.amp: every stage's Trainer runs in the precision it means
    progress: bool = True
    checkpoint_dir: Path | None = None
    resume: bool = False
    train_config: TrainConfig | None = None  # the run's training settings (defenses that retrain a model)
    # a small set of TRULY clean training samples (original images and labels), drawn by `oracle_clean_subset`
    # for defenses that assume the defender holds clean data (`needs_clean_data`: fine-pruning, NAD); an oracle
    # the untrusted data alone does not give, reported as such in metrics.json ("clean_subset")
    clean_data: ImageDataset | None = None

    def stage_dir(self, name: str) -> Path | None:
        """A checkpoint sub-folder for one stage of the defense."""
        return self.checkpoint_dir / name if self.checkpoint_dir else None

    def config(self, **settings: Any) -> TrainConfig:
        """A stage's training settings: `settings` over the run's device, precision and progress bars."""
        return TrainConfig(**{"device": self.device, "amp": self.amp, "progress": self.progress, **settings})

    def trainer(self, model: nn.Module, stage: str, config: TrainConfig, *, loss_fn: LossFn = cross_entropy,
                params: Iterable[nn.Parameter] | None = None, seed_offset: int = 0) -> Trainer:
        """The one trainer for a stage of the defense: seeded from the run (+ `seed_offset`), checkpointing (and
        resuming) in the stage's folder."""
        return Trainer(model, config, loss_fn=loss_fn, params=params, seed=self.seed + seed_offset,
                       checkpoint_dir=self.stage_dir(stage))


@dataclass
class DefenseResult:
    """The defended model, the sample split when the defense made one, and anything worth reporting
    (run_backdoor reads `history`, `score_name` (the split's score, for its histogram) and `metrics`, extra
    JSON keys for metrics.json)."""

    model: nn.Module
    split: Split | None = None
    report: dict[str, Any] = field(default_factory=dict)


class Defense(Component):
    """Base class: a subclass sets `name`, `Settings` and implements `run`."""

    Settings: ClassVar[type[DefenseSettings]] = DefenseSettings
    settings: DefenseSettings
    needs_backdoored_model: ClassVar[bool] = False
    needs_clean_data: ClassVar[bool] = False  # True: settings have `clean_fraction`; run_backdoor fills ctx.clean_data
    uses_sd_module: ClassVar[bool] = False  # True: settings have `sd`, which a preset's top-level `sd` layers under

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        """Defend: `train` is the untrusted training set (images and possibly poisoned labels)."""
        raise NotImplementedError


DEFENSES: Registry[type[Defense]] = Registry("defense")  # each defense registers itself at its class


def untrusted_view(data: ImageDataset) -> ImageDataset:
    """The training set as a defender sees it: images and labels only (no poison flags, no trigger)."""
    return SubsetDataset(data, torch.arange(len(data)))


def oracle_clean_subset(data: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, Tensor]:
    """A seeded draw of round(fraction * N) truly clean samples of a PoisonedDataset (non-poisoned indices,
    original images and labels), and their indices: the clean data fine-pruning and NAD assume."""
    flags = getattr(data, "poison_flags", None)
    if flags is None:
        raise ConfigError("a truly clean subset needs the poisoned dataset's ground-truth flags")
    if not 0 < fraction < 1:
        raise ConfigError(f"clean_fraction must be in (0, 1), got {fraction}")
    pool = (~flags).nonzero().flatten()
    k = max(1, round(fraction * len(data)))
    if k > pool.numel():
        raise ConfigError(f"clean_fraction {fraction} asks for {k} clean samples, only {pool.numel()} exist")
    pick = pool[torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(seed))[:k]].sort().values
    return data.base.subset(pick), pick  # type: ignore[attr-defined]
