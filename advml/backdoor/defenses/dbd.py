"""DBD (Huang et al., ICLR 2022: backdoor defense via decoupling the training process), as the official code
(SCLBD/DBD `mixmatch_finetune.py`) and BackdoorBench (`defense/dbd.py`) run it: (1) SimCLR on the untrusted set
with its labels dropped; (2) a linear head on the frozen backbone with the symmetric cross-entropy (SCE), on
crop + flip views; (3)-(4) every MixMatch epoch starts by scoring all samples with the current model's SCE loss:
the epsilon = 50 % lowest keep their labels, the rest are unlabelled for that epoch's MixMatch fine-tuning of the
whole network. Stages 1-2 reuse the shared contrastive encoder trainer and linear probe, stage 4 the one Trainer
(`mixmatch.py`), an epoch at a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from advml.backdoor.defenses.base import DEFENSES, Defense, DefenseContext, DefenseResult, DefenseSettings
from advml.backdoor.defenses.compute import ComputeLog
from advml.backdoor.defenses.contrastive import (
    ContrastiveSettings,
    ProbeSettings,
    crop_flip_augment,
    train_encoder,
    train_probe,
)
from advml.backdoor.defenses.mixmatch import MixMatchSettings, mixmatch_loss_fn
from advml.backdoor.defenses.split import Split
from advml.data.base import ImageDataset, SubsetDataset
from advml.errors import ConfigError
from advml.metrics import map_batches
from advml.train import CHECKPOINT_NAME, Batch, Trainer
from advml.train.config import Augment


def sce_loss(logits: Tensor, y: Tensor, alpha: float = 0.1, beta: float = 1.0, reduction: str = "mean") -> Tensor:
    """Symmetric cross-entropy (Wang et al. 2019): alpha CE + beta RCE, RCE = -sum_c p_c log(clamp(onehot, 1e-4, 1))
    with p = softmax clamped to [1e-7, 1] (the DBD code's clamps); reduction 'mean' or 'none'."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    ce = F.cross_entropy(logits, y, reduction="none")
    p = torch.softmax(logits, dim=1).clamp(1e-7, 1.0)
    onehot = F.one_hot(y, logits.shape[1]).float().clamp(1e-4, 1.0)
    rce = -(p * onehot.log()).sum(dim=1)
    loss = alpha * ce + beta * rce
    return loss.mean() if reduction == "mean" else loss


def sample_losses(model: nn.Module, data: ImageDataset, loss: Callable[[Tensor, Tensor], Tensor],
                  batch_size: int = 512, augment: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Per-sample loss(logits, labels) of every sample of `data` (through `augment`), model in eval mode (CPU)."""
    return map_batches(model, data, lambda m, x, y: loss(m(augment(x) if augment else x), y), batch_size=batch_size)


def labelled_split(scores: Tensor, epsilon: float) -> Split:
    """DBD's `get_semi_idx`: the floor(epsilon N) lowest-loss samples are labelled (Split.clean), all others
    unlabelled (Split.poisoned: what DBD treats as suspect); nothing is left uncertain."""
    n = scores.numel()
    k = int(epsilon * n)
    order = torch.argsort(scores, stable=True)
    return Split(order[:k].sort().values, order[k:].sort().values, torch.zeros(0, dtype=torch.long), scores.clone())


class DBDSettings(DefenseSettings):
    """BackdoorBench's DBD settings (paper scale). Its cosine schedule has T_max=1000 but runs 100 epochs, so
    its lr stays within 3 % of 0.4; ours decays over the epochs run, as the original 1000-epoch run did."""

    encoder: ContrastiveSettings = Field(default_factory=lambda: ContrastiveSettings(
        epochs=100, batch_size=512, lr=0.4, weight_decay=1e-4, warmup_epochs=0, temperature=0.5, base_temperature=0.5,
        blur_p=0.5, projection_bn=True, anchor_views="first"),
        description="SimCLR as DBD's SimCLRLoss: NT-Xent with first-view anchors, no temperature / 0.07 scaling; "
        "projection head Linear-BatchNorm1d-ReLU-Linear")
    warmup: ProbeSettings = Field(default_factory=lambda: ProbeSettings(
        epochs=10, batch_size=128, lr=0.002, optimizer="adam", augment="crop_flip", train_bn=True),
        description="linear head on the frozen backbone (its BatchNorm in train mode, as the official warm-up)")
    sce_alpha: float = Field(0.1, ge=0)
    sce_beta: float = Field(1.0, ge=0)
    # a float: BackdoorBench declares `--epsilon` (and MixMatch's `--temperature`) with type=int, a bug
    epsilon: float = Field(0.5, gt=0, lt=1, description="lowest-SCE-loss fraction kept labelled")
    split_augment: bool = Field(True, description="score the split on crop + flip views, as the official code "
                                "does (its record loader reads the training transform); False: the plain images")
    mixmatch: MixMatchSettings = Field(default_factory=MixMatchSettings)
    augment: Augment = Field("standard", description="crop (reflect pad 4) + flip in MixMatch")


@DEFENSES.register("dbd", title="DBD")
class DBD(Defense):
    """DBD: SimCLR backbone, SCE linear head, 50 % lowest-loss labelled, MixMatch fine-tuning

    SimCLR backbone -> SCE linear head -> per MixMatch epoch: 50 % lowest SCE labelled, MixMatch on all."""

    Settings = DBDSettings
    settings: DBDSettings

    def split(self, model: nn.Module, train: ImageDataset, seed: int) -> Split:
        """The official record + `get_semi_idx`: every sample's SCE loss under the current model (eval mode,
        through crop + flip with `split_augment`, drawn from a generator seeded with `seed`), lowest half labelled."""
        s = self.settings
        augment = crop_flip_augment(train.image_shape[1:]) if s.split_augment else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            scores = sample_losses(model, train, lambda z, y: sce_loss(z, y, s.sce_alpha, s.sce_beta, "none"),
                                   augment=augment)
        split = labelled_split(scores, s.epsilon)
        if split.clean.numel() == 0 or split.poisoned.numel() == 0:
            raise ConfigError("DBD needs labelled and unlabelled samples; use a larger training set")
        return split

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        s, n = self.settings, len(train)
        compute = ComputeLog()
        common: dict[str, Any] = {"seed": ctx.seed, "device": ctx.device, "amp": ctx.amp, "progress": ctx.progress,
                                  "resume": ctx.resume}
        with compute.stage("simclr", epochs=s.encoder.epochs, images=n, forward_images=2 * s.encoder.epochs * n):
            model = train_encoder(ctx.new_model(s.encoder.model), train, s.encoder, supervised=None, use_labels=False,
                                  checkpoint_dir=ctx.stage_dir("encoder"), **common)

        def sce(model: nn.Module, batch: Batch) -> Tensor:
            return sce_loss(model(batch.x), batch.y, s.sce_alpha, s.sce_beta)

        with compute.stage("warmup", epochs=s.warmup.epochs, images=n):
            train_probe(model, train, s.warmup, sce, checkpoint_dir=ctx.stage_dir("warmup"), **common)

        m = s.mixmatch
        augment = crop_flip_augment(train.image_shape[1:]) if s.augment == "standard" else (lambda x: x)
        config = ctx.config(epochs=m.epochs, batch_size=m.batch_size, lr=m.lr, optimizer="adam", weight_decay=0.0,
                            schedule="constant", augment="none")
        # this module's Trainer, not ctx.trainer: the reference port (tests/reference/test_ref_dbd_split.py) records
        # the MixMatch epochs by replacing it
        trainer = Trainer(model, config, seed=ctx.seed, checkpoint_dir=ctx.stage_dir("mixmatch"))
        if ctx.resume and trainer.checkpoint_dir and (trainer.checkpoint_dir / CHECKPOINT_NAME).is_file():
            trainer.load_checkpoint(trainer.checkpoint_dir / CHECKPOINT_NAME)
        step = {"epoch": -1, "step": 0}

        def progress() -> float:  # the official ramp counts the warm-up's epochs too (one epoch loop for both)
            if trainer.epoch != step["epoch"]:
                step["epoch"], step["step"] = trainer.epoch, 0
            step["step"] += 1
            return s.warmup.epochs + trainer.epoch + (step["step"] - 1) / m.iterations

        split, changes, split_seconds, start = None, [], 0.0, time.perf_counter()
        for epoch in range(trainer.epoch, m.epochs):
            t0 = time.perf_counter()
            new = self.split(model, train, seed=ctx.seed * 100_003 + epoch)
            split_seconds += time.perf_counter() - t0
            if split is not None:
                changes.append(int(new.clean.numel() - torch.isin(new.clean, split.clean).sum()))
            split = new
            labelled = SubsetDataset(train, split.clean)
            unlabelled = SubsetDataset(train, split.poisoned)  # MixMatch reads its images only, never its labels
            # one labelled position per step and batch row; the Trainer shuffles them every epoch
            view = SubsetDataset(labelled, torch.arange(m.iterations * m.batch_size) % labelled.indices.numel())
            loss = mixmatch_loss_fn(unlabelled, labelled.num_classes, m, progress, ctx.seed + epoch, augment)
            trainer.fit([(view, loss)], stop_after=epoch + 1)
        if split is None:  # resumed after the last epoch: the split the last epoch trained on
            split = self.split(model, train, seed=ctx.seed * 100_003 + m.epochs - 1)
        per_epoch = m.iterations * m.batch_size
        compute.add("split", seconds=split_seconds, epochs=m.epochs, images=n)
        compute.add("mixmatch", seconds=time.perf_counter() - start - split_seconds, epochs=m.epochs,
                    images=2 * per_epoch, forward_images=m.epochs * per_epoch * (2 * m.k + 1))
        return DefenseResult(model, split, {"history": trainer.history, "score_name": "SCE loss",
                                            "metrics": {"defense_compute": compute.report(),
                                                        "labelled_changes_per_epoch": changes}})
