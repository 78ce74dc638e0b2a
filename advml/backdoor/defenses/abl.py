"""ABL (Li et al., NeurIPS 2021: anti-backdoor learning): train on the untrusted set with the local gradient
ascent (LGA) loss sign(CE - gamma) CE, which holds every batch loss near gamma so that the fast-learnt poisoned
samples stand out with the lowest losses; isolate the lowest-loss fraction, keep training on the rest, then
unlearn the isolated samples by gradient ascent. Every stage is a run of the one Trainer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from advml.backdoor.defenses.base import DEFENSES, Defense, DefenseContext, DefenseResult, DefenseSettings
from advml.backdoor.defenses.compute import ComputeLog
from advml.backdoor.defenses.dbd import sample_losses
from advml.backdoor.defenses.dbr import ascent_loss
from advml.backdoor.defenses.split import Split
from advml.data.base import ImageDataset, SubsetDataset
from advml.errors import ConfigError
from advml.train import Batch
from advml.train.config import Augment, BatchSize, Epochs, LearningRate, Momentum, WeightDecay


def lga_loss(gamma: float) -> Callable[[nn.Module, Batch], Tensor]:
    """LGA as the official code applies it to the batch-mean CE ('Flooding'): sign(CE - gamma) * CE — below
    gamma the step ascends CE, above it descends."""

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        ce = F.cross_entropy(model(batch.x), batch.y)
        return torch.sign(ce.detach() - gamma) * ce

    return loss


def isolate(scores: Tensor, ratio: float) -> Split:
    """The max(1, floor(ratio N)) lowest-loss samples are isolated (Split.poisoned), the rest kept (Split.clean)."""
    n = scores.numel()
    k = min(max(int(ratio * n), 1), n - 1)
    order = torch.argsort(scores, stable=True)
    return Split(order[k:].sort().values, order[:k].sort().values, torch.zeros(0, dtype=torch.long), scores.clone())


class ABLSettings(DefenseSettings):
    """BackdoorBench's CIFAR-10 ABL config (tuning 20 epochs, finetuning 60, lr 0.1, unlearning lr 5e-4,
    momentum 0.9, wd 1e-4, isolation 1 %, gamma 0.5) with the paper's 5 unlearning epochs (BackdoorBench: 20)
    and the official code's batch 64 and finetuning steps (lr x0.1 at epoch 40)."""

    isolation_epochs: Epochs = Field(20, description="T_isolate: epochs of LGA training before isolating")
    gamma: float = Field(0.5, ge=0, description="the LGA loss floor")
    isolation_ratio: float = Field(0.01, gt=0, lt=1, description="lowest-loss fraction isolated as poisoned")
    lr: LearningRate = Field(0.1, description="lr of the LGA isolation epochs")
    finetune_epochs: int = Field(60, ge=0, description="epochs of plain CE on the samples kept")
    finetune_lr: LearningRate = 0.1
    finetune_milestones: list[int] = Field(default_factory=lambda: [40], description="lr x0.1 at these epochs")
    unlearning_epochs: Epochs = Field(5, description="epochs of gradient ascent on the isolated samples")
    unlearning_lr: LearningRate = 5e-4
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 1e-4
    batch_size: BatchSize = 64
    augment: Augment = Field("standard", description="crop (pad 4) + flip while isolating "
                                                 "and fine-tuning (unlearning: none, as the official code)")


@DEFENSES.register("abl", title="ABL")
class ABL(Defense):
    """ABL: LGA training, isolate the 1 % lowest-loss samples, train on the rest, unlearn them

    LGA training -> isolate the lowest-loss 1 % -> train on the rest -> gradient ascent on the isolated."""

    Settings = ABLSettings
    settings: ABLSettings

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        s, n = self.settings, len(train)
        if n < 2:
            raise ConfigError("ABL needs at least two training samples")
        compute = ComputeLog()
        model = ctx.new_model()
        base = {"batch_size": s.batch_size, "momentum": s.momentum, "weight_decay": s.weight_decay}
        history: dict[str, list] = {}
        with compute.stage("isolation", epochs=s.isolation_epochs, images=n):
            config = ctx.config(epochs=s.isolation_epochs, lr=s.lr, schedule="constant", augment=s.augment, **base)
            history["isolation"] = ctx.trainer(model, "isolation", config, loss_fn=lga_loss(s.gamma)).fit(
                train, resume=ctx.resume)
        with compute.stage("isolate", epochs=1, images=n):
            split = isolate(sample_losses(model, train, lambda z, y: F.cross_entropy(z.float(), y, reduction="none")),
                            s.isolation_ratio)
        if s.finetune_epochs:
            with compute.stage("finetune", epochs=s.finetune_epochs, images=split.clean.numel()):
                config = ctx.config(epochs=s.finetune_epochs, lr=s.finetune_lr, schedule="multistep",
                                    milestones=s.finetune_milestones, augment=s.augment, **base)
                history["finetune"] = ctx.trainer(model, "finetune", config, seed_offset=1).fit(
                    SubsetDataset(train, split.clean), resume=ctx.resume)
        with compute.stage("unlearning", epochs=s.unlearning_epochs, images=split.poisoned.numel()):
            config = ctx.config(epochs=s.unlearning_epochs, lr=s.unlearning_lr, schedule="constant", augment="none",
                                **base)
            history["unlearning"] = ctx.trainer(model, "unlearning", config, loss_fn=ascent_loss, seed_offset=2).fit(
                SubsetDataset(train, split.poisoned), resume=ctx.resume)
        return DefenseResult(model, split, {"history": history, "score_name": "LGA-model CE loss",
                                            "metrics": {"defense_compute": compute.report()}})
