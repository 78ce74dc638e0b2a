"""DBD (Huang et al., ICLR 2022: backdoor defense via decoupling the training process), as BackdoorBench runs
it: (1) SimCLR on the untrusted set with its labels dropped; (2) a linear head on the frozen backbone with the
symmetric cross-entropy (SCE); (3) the epsilon = 50 % of samples with the lowest SCE loss keep their labels,
the rest become unlabelled; (4) MixMatch fine-tuning of the whole network. Stages 1-2 reuse the shared
contrastive encoder trainer and linear probe, stage 4 the one Trainer (`mixmatch.py`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from advml.backdoor.defenses.base import Defense, DefenseContext, DefenseResult, DefenseSettings
from advml.backdoor.defenses.compute import ComputeLog
from advml.backdoor.defenses.contrastive import ContrastiveSettings, ProbeSettings, train_encoder, train_probe
from advml.backdoor.defenses.mixmatch import MixMatchSettings, mixmatch_loss_fn
from advml.backdoor.defenses.sd import Split
from advml.data.base import ImageDataset, SubsetDataset
from advml.errors import ConfigError
from advml.train import Batch, TrainConfig, Trainer


def sce_loss(logits: Tensor, y: Tensor, alpha: float = 0.1, beta: float = 1.0, reduction: str = "mean") -> Tensor:
    """Symmetric cross-entropy (Wang et al. 2019): alpha CE + beta RCE, RCE = -sum_c p_c log(clamp(onehot, 1e-4, 1))
    with p = softmax clamped to [1e-7, 1] (the DBD code's clamps); reduction 'mean' or 'none'."""
    logits = logits.float()
    ce = F.cross_entropy(logits, y, reduction="none")
    p = torch.softmax(logits, dim=1).clamp(1e-7, 1.0)
    onehot = F.one_hot(y, logits.shape[1]).float().clamp(1e-4, 1.0)
    rce = -(p * onehot.log()).sum(dim=1)
    loss = alpha * ce + beta * rce
    return loss.mean() if reduction == "mean" else loss


@torch.no_grad()
def sample_losses(model: nn.Module, data: ImageDataset, loss: Callable[[Tensor, Tensor], Tensor],
                  batch_size: int = 512) -> Tensor:
    """Per-sample loss(logits, labels) of every sample of `data`, model in eval mode, no augmentation (CPU)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for idx in torch.arange(len(data)).split(batch_size):
        x, y = data.get_batch(idx)
        out.append(loss(model(x.to(dev)), y.to(dev)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


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
        blur_p=0.5), description="SimCLR: NT-Xent without SupContrast's temperature / 0.07 scaling")
    warmup: ProbeSettings = Field(default_factory=lambda: ProbeSettings(
        epochs=10, batch_size=128, lr=0.002, optimizer="adam"), description="linear head on the frozen backbone")
    sce_alpha: float = Field(0.1, ge=0)
    sce_beta: float = Field(1.0, ge=0)
    # a float: BackdoorBench declares `--epsilon` (and MixMatch's `--temperature`) with type=int, a bug
    epsilon: float = Field(0.5, gt=0, lt=1, description="lowest-SCE-loss fraction kept labelled")
    mixmatch: MixMatchSettings = Field(default_factory=MixMatchSettings)
    augment: Literal["standard", "none"] = Field("standard", description="crop (pad 4) + flip in MixMatch")


class DBD(Defense):
    """SimCLR backbone -> SCE linear head -> 50 % lowest-loss labelled -> MixMatch on the whole network."""

    name = "dbd"
    Settings = DBDSettings

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        s, n = self.settings, len(train)
        compute = ComputeLog()
        common = {"seed": ctx.seed, "device": ctx.device, "progress": ctx.progress, "resume": ctx.resume}
        with compute.stage("simclr", epochs=s.encoder.epochs, images=n, forward_images=2 * s.encoder.epochs * n):
            model = train_encoder(ctx.new_model(), train, s.encoder, supervised=None, use_labels=False,
                                  checkpoint_dir=ctx.stage_dir("encoder"), **common)

        def sce(model: nn.Module, batch: Batch) -> Tensor:
            return sce_loss(model(batch.x), batch.y, s.sce_alpha, s.sce_beta)

        with compute.stage("warmup", epochs=s.warmup.epochs, images=n):
            train_probe(model, train, s.warmup, sce, checkpoint_dir=ctx.stage_dir("warmup"), **common)
        with compute.stage("split", epochs=1, images=n):
            scores = sample_losses(model, train, lambda z, y: sce_loss(z, y, s.sce_alpha, s.sce_beta, "none"))
            split = labelled_split(scores, s.epsilon)
        if split.clean.numel() == 0 or split.poisoned.numel() == 0:
            raise ConfigError("DBD needs labelled and unlabelled samples; use a larger training set")

        m = s.mixmatch
        labelled = SubsetDataset(train, split.clean)
        unlabelled = SubsetDataset(train, split.poisoned)  # MixMatch reads its images only, never its labels
        # one labelled position per step and batch row; the Trainer shuffles them every epoch
        view = SubsetDataset(labelled, torch.arange(m.iterations * m.batch_size) % labelled.indices.numel())
        config = TrainConfig(epochs=m.epochs, batch_size=m.batch_size, lr=m.lr, optimizer="adam", weight_decay=0.0,
                             schedule="constant", augment=s.augment, device=ctx.device, progress=ctx.progress)
        step = {"epoch": -1, "step": 0}

        def progress() -> float:  # epochs done + the share of this epoch done, for the lambda_u ramp
            if trainer.epoch != step["epoch"]:
                step["epoch"], step["step"] = trainer.epoch, 0
            step["step"] += 1
            return trainer.epoch + (step["step"] - 1) / m.iterations

        loss = mixmatch_loss_fn(unlabelled, labelled.num_classes, m, progress, ctx.seed)
        trainer = Trainer(model, config, loss_fn=loss, seed=ctx.seed, checkpoint_dir=ctx.stage_dir("mixmatch"))
        per_epoch = m.iterations * m.batch_size
        with compute.stage("mixmatch", epochs=m.epochs, images=2 * per_epoch,
                           forward_images=m.epochs * per_epoch * (2 * m.k + 1)):
            history = trainer.fit(view, resume=ctx.resume)
        return DefenseResult(model, split, {"history": history, "score_name": "SCE loss",
                                            "metrics": {"defense_compute": compute.report()}})
