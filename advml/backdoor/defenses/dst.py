"""D-ST (Chen et al. 2022): secure training — an SS-CTL encoder (label positives only for the detected
clean samples D_c) and the MCE linear classifier (CE on D_c minus lambda_p CE on D_p). Also the two
baselines of the paper's table, as we read them: a SimCLR or SupCon encoder + a linear head on all labels."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from advml.backdoor.defenses.base import (
    DEFENSES,
    Defense,
    DefenseContext,
    DefenseResult,
    DefenseSettings,
)
from advml.backdoor.defenses.compute import ComputeLog
from advml.backdoor.defenses.contrastive import (
    ContrastiveSettings,
    ProbeSettings,
    train_encoder,
    train_probe,
)
from advml.backdoor.defenses.holdout import HoldoutSettings, hold_out
from advml.backdoor.defenses.sd import SDSettings, distinguish
from advml.data.base import ImageDataset
from advml.errors import ConfigError
from advml.train import Batch, cross_entropy


def mce_loss(is_poisoned: Tensor, lambda_p: float):
    """CE over the batch's D_c samples minus lambda_p times CE over its D_p samples (by dataset index)."""

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        ce = F.cross_entropy(model(batch.x), batch.y, reduction="none")
        p = is_poisoned[batch.index].to(ce.device)
        clean = ce[~p].mean() if (~p).any() else ce.sum() * 0
        poison = ce[p].mean() if p.any() else ce.sum() * 0
        return clean - lambda_p * poison

    return loss


class DSTSettings(HoldoutSettings):
    """The official ST module's settings (paper scale: 200 contrastive epochs, batch 512)."""

    sd: SDSettings = Field(default_factory=SDSettings)
    encoder: ContrastiveSettings = Field(default_factory=ContrastiveSettings)
    classifier: ProbeSettings = Field(default_factory=ProbeSettings)
    lambda_p: float = Field(0.001, ge=0, description="weight of the ascent term on D_p in the MCE loss")


@DEFENSES.register("d-st", title="D-ST")
class DST(Defense):
    """D-ST: FCT split, SS-CTL encoder (label positives for D_c only), MCE linear classifier

    SD split -> SS-CTL encoder on all samples -> MCE linear classifier on D_c and D_p."""

    uses_sd_module = True
    Settings = DSTSettings
    settings: DSTSettings

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        s, n = self.settings, len(train)
        compute = ComputeLog()  # wall time and epochs x images per stage, to set beside DBD's
        sd_epochs = s.sd.warmup_epochs + s.sd.finetune_epochs
        with compute.stage("sd", epochs=sd_epochs, images=n, forward_images=(sd_epochs + 1 + s.sd.draws) * n):
            split = distinguish(ctx.new_model(s.sd.model), train, s.sd, seed=ctx.seed, device=ctx.device, amp=ctx.amp,
                                progress=ctx.progress, checkpoint_dir=ctx.stage_dir("sd"), resume=ctx.resume)
        supervised = torch.zeros(len(train), dtype=torch.bool)
        supervised[split.clean] = True
        with compute.stage("encoder", epochs=s.encoder.epochs, images=n, forward_images=2 * s.encoder.epochs * n):
            model = train_encoder(ctx.new_model(s.encoder.model), train, s.encoder, supervised=supervised,
                                  use_labels=True, seed=ctx.seed, device=ctx.device, amp=ctx.amp, progress=ctx.progress,
                                  checkpoint_dir=ctx.stage_dir("encoder"), resume=ctx.resume)
        held = hold_out(train, split, s, ctx.seed)
        if held.clean.numel() == 0:
            raise ConfigError("D_c is empty; use a larger training set or a larger clean_ratio")
        index = torch.cat([held.clean, held.poisoned])
        is_poisoned = torch.cat([torch.zeros(held.clean.numel(), dtype=torch.bool),
                                 torch.ones(held.poisoned.numel(), dtype=torch.bool)])
        with compute.stage("classifier", epochs=s.classifier.epochs, images=index.numel()):
            history = train_probe(model, train.subset(index), s.classifier, mce_loss(is_poisoned, s.lambda_p),
                                  evals=held.evals, select=held.select,
                                  seed=ctx.seed, device=ctx.device, amp=ctx.amp, progress=ctx.progress,
                                  checkpoint_dir=ctx.stage_dir("classifier"), resume=ctx.resume)
        return DefenseResult(model, split, {"history": history, "metrics": {"defense_compute": compute.report()}})


class BaselineSettings(DefenseSettings):
    """A contrastive encoder + a linear head trained with CE on all (possibly poisoned) labels."""

    encoder: ContrastiveSettings = Field(default_factory=ContrastiveSettings)
    classifier: ProbeSettings = Field(default_factory=ProbeSettings)


@DEFENSES.register("baseline1", title="Baseline1")
class Baseline1(Defense):
    """SimCLR encoder (labels unused) + linear head on all labels

    Baseline1: a self-supervised (SimCLR, labels unused) encoder + a linear head on all labels."""

    Settings = BaselineSettings
    settings: BaselineSettings
    use_labels = False

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        s = self.settings
        model = train_encoder(ctx.new_model(s.encoder.model), train, s.encoder, supervised=None,
                              use_labels=self.use_labels, seed=ctx.seed, device=ctx.device, amp=ctx.amp,
                              progress=ctx.progress, checkpoint_dir=ctx.stage_dir("encoder"), resume=ctx.resume)
        history = train_probe(model, train, s.classifier, cross_entropy, seed=ctx.seed, device=ctx.device, amp=ctx.amp,
                              progress=ctx.progress, checkpoint_dir=ctx.stage_dir("classifier"), resume=ctx.resume)
        return DefenseResult(model, report={"history": history})


@DEFENSES.register("baseline2", title="Baseline2")
class Baseline2(Baseline1):
    """SupCon encoder on all labels + linear head on all labels

    Baseline2: a supervised contrastive (SupCon) encoder on all labels + a linear head on all labels."""

    use_labels = True
