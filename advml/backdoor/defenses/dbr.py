"""D-BR (Chen et al. 2022): purify a backdoored model by alternating gradient ascent on the detected
poisoned samples D_p (unlearning) and descent on the detected clean samples D_c (relearning)."""

from __future__ import annotations

import logging

from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from advml.backdoor.defenses.base import (
    DEFENSES,
    Defense,
    DefenseContext,
    DefenseResult,
)
from advml.backdoor.defenses.holdout import HoldoutSettings, hold_out
from advml.backdoor.defenses.sd import SDSettings, distinguish
from advml.data.base import ImageDataset
from advml.errors import ConfigError
from advml.train import Batch, cross_entropy
from advml.train.config import Augment, BatchSize, Epochs, LearningRate, Momentum, WeightDecay

log = logging.getLogger("advml")


class DBRSettings(HoldoutSettings):
    """The official `unlearn_relearn.py` settings; model selection on held-out D_c/D_p, not test labels."""

    sd: SDSettings = Field(default_factory=SDSettings)
    epochs: Epochs = 20
    lr: LearningRate = Field(1e-4, description="constant lr of the one SGD optimiser of both passes")
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4
    batch_size: BatchSize = 128
    augment: Augment = Field("standard", description="crop (pad 4) + flip")


def ascent_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Unlearning: minus the cross-entropy on (detected) poisoned samples and their given labels."""
    return -F.cross_entropy(model(batch.x), batch.y)


@DEFENSES.register("d-br", title="D-BR")
class DBR(Defense):
    """D-BR: FCT split, then unlearn D_p (gradient ascent) / relearn D_c, 20 epochs, lr 1e-4

    Backdoor removal: SD split, then each epoch one ascent pass over D_p and one descent pass over D_c."""

    uses_sd_module = True
    Settings = DBRSettings
    settings: DBRSettings
    needs_backdoored_model = True

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        if ctx.backdoored is None:
            raise ConfigError("D-BR purifies a trained model; none was given")
        s = self.settings
        split = distinguish(ctx.new_model(s.sd.model), train, s.sd, seed=ctx.seed, device=ctx.device, amp=ctx.amp,
                            progress=ctx.progress, checkpoint_dir=ctx.stage_dir("sd"), resume=ctx.resume)
        held = hold_out(train, split, s, ctx.seed)
        if held.poisoned.numel() == 0 or held.clean.numel() == 0:
            raise ConfigError("D_p or D_c is empty; use a larger training set or larger ratios")
        config = ctx.config(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, momentum=s.momentum,
                            weight_decay=s.weight_decay, schedule="constant", augment=s.augment)
        log.info("advml: D-BR: unlearn %d suspected poisoned samples, relearn %d clean ones, %d epochs",
                 held.poisoned.numel(), held.clean.numel(), s.epochs)
        trainer = ctx.trainer(ctx.backdoored, "unlearn_relearn", config)
        history = trainer.fit([(train.subset(held.poisoned), ascent_loss), (train.subset(held.clean), cross_entropy)],
                              held.evals, resume=ctx.resume, select=held.select)
        return DefenseResult(ctx.backdoored, split, {"history": history})
