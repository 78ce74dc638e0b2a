"""Defense: settings in, a purified (or securely trained) model plus a report out. A defense sees the
untrusted training set only — never the test set, never the ground-truth poison flags."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from advml.backdoor.defenses.sd import Split
from advml.config import Settings, validate
from advml.data.base import ImageDataset, SubsetDataset
from advml.errors import ConfigError
from advml.registry import Registry
from advml.stats import wilson
from advml.train import TrainConfig
from advml.utils.precision import AmpSetting


class DefenseSettings(Settings):
    """Settings every defense has (none so far); subclasses add theirs."""


class HoldoutSettings(DefenseSettings):
    """Model selection without test labels, for defenses that train on the SD split (D-BR, D-ST): part of D_c and
    of D_p is held out and each epoch is scored by held-out acc(D_c) - acc(D_p) (the official code's ACC - ASR,
    which reads the test set)."""

    holdout_fraction: float = Field(0.1, ge=0, lt=1, description="share of D_c and of D_p kept out of training "
                                    "to pick the epoch with the best held-out acc(D_c) - acc(D_p)")
    selection: Literal["pessimistic", "point"] = Field(
        "pessimistic", description="rank epochs by the 95 % Wilson lower bound of held-out acc(D_c) minus the upper "
        "bound of acc(D_p) (pessimistic), or by the two point estimates (point)")


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


@dataclass
class DefenseResult:
    """The defended model, the sample split when the defense made one, and anything worth reporting
    (run_backdoor reads `history`, `score_name` (the split's score, for its histogram) and `metrics`, extra
    JSON keys for metrics.json)."""

    model: nn.Module
    split: Split | None = None
    report: dict[str, Any] = field(default_factory=dict)


class Defense:
    """Base class: a subclass sets `name`, `Settings` and implements `run`."""

    name: ClassVar[str]
    Settings: ClassVar[type[DefenseSettings]] = DefenseSettings
    needs_backdoored_model: ClassVar[bool] = False
    needs_clean_data: ClassVar[bool] = False  # True: settings have `clean_fraction`; run_backdoor fills ctx.clean_data
    uses_sd_module: ClassVar[bool] = False  # True: settings have `sd`, which a preset's top-level `sd` layers under

    def __init__(self, settings: DefenseSettings | None = None, **kwargs: Any) -> None:
        if settings is not None and kwargs:
            raise ConfigError("pass either a settings object or keyword settings, not both")
        self.settings = settings if settings is not None else validate(self.Settings, kwargs)

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        """Defend: `train` is the untrusted training set (images and possibly poisoned labels)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The defense's name and every setting (defaults included)."""
        return {"name": self.name, **self.settings.model_dump(mode="json")}


DEFENSES: Registry[type[Defense]] = Registry("defense")  # each defense registers itself at its class


def untrusted_view(data: ImageDataset) -> ImageDataset:
    """The training set as a defender sees it: images and labels only (no poison flags, no trigger)."""
    return SubsetDataset(data, torch.arange(len(data)))


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
