"""The SD module (sample distinguishment) of D-ST/D-BR: train a model briefly on the untrusted data
without augmentation, fine-tune it with the intra-class loss, score every sample with FCT and split
the training set into D_c (lowest scores, likely clean), D_p (highest, likely poisoned) and D_u."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator, Field
from torch import Tensor, nn
from torch.nn import functional as F

from advml.backdoor.defenses.fct import DEFAULT_TRANSFORMS, TRANSFORMS, fct_scores
from advml.backdoor.defenses.split import Split, split_by_score
from advml.config import Settings
from advml.data.base import ImageDataset
from advml.errors import ConfigError
from advml.train import Batch, TrainConfig, Trainer
from advml.train.config import BatchSize, Epochs, LearningRate
from advml.utils.figures import pyplot, save_figure
from advml.utils.precision import AmpSetting, at_least_float32

log = logging.getLogger("advml")


def _composition(value: Any) -> Any:
    """'rotate+translate' -> ['rotate', 'translate'] (one word, as a bench grid value)."""
    return value.split("+") if isinstance(value, str) else value


class SDSettings(Settings):
    """The official code's settings (EBD `train_attack_noTrans.py`, `finetune_attack_noTrans.py`,
    `calculate_consistency.py`, `calculate_gamma.py`)."""

    model: str | None = Field(None, description="architecture of the SD model (a registry name); None: the run's")
    warmup_epochs: Epochs = Field(2, description="plain CE epochs without augmentation")
    finetune_epochs: int = Field(10, ge=0, description="epochs of the intra-class loss")
    finetune_loss: Literal["intra", "ce+intra"] = Field(
        "intra", description="intra: the intra-class loss alone, as the official code (EBD "
        "finetune_attack_noTrans.py, BackdoorBench d-br.py); ce+intra: CE + intra_weight x intra-class loss")
    intra_weight: float = Field(1.0, ge=0, description="weight of the intra-class loss while fine-tuning")
    lr: LearningRate = 0.01
    batch_size: BatchSize = 128
    # one SGD optimiser and one CosineAnnealingLR(T_max=100) run through warm-up and fine-tuning, as the official
    # fine-tuning resumes the warm-up checkpoint's optimiser and scheduler
    schedule: Literal["constant", "cosine"] = "cosine"
    t_max: int = Field(100, ge=1, description="the cosine schedule's period in epochs (official: 100)")
    transforms: Annotated[list[str], BeforeValidator(_composition)] = Field(
        default_factory=lambda: list(DEFAULT_TRANSFORMS),
        description="FCT's tau, applied in order (a list, or names joined by '+'): " + ", ".join(TRANSFORMS.names()))
    draws: int = Field(1, ge=1, description="random transforms averaged per sample (1 in the official code)")
    normalize_features: bool = Field(False, description="L2-normalise features before the FCT difference")
    clean_ratio: float = Field(0.2, gt=0, lt=1, description="alpha_c: lowest-score fraction -> D_c")
    poison_ratio: float = Field(0.05, gt=0, lt=1, description="alpha_p: highest-score fraction -> D_p")

    def model_post_init(self, _: Any) -> None:
        if self.model is not None:
            from advml.models import MODELS

            MODELS.get(self.model)
        for name in self.transforms:
            TRANSFORMS.get(name)
        if self.clean_ratio + self.poison_ratio > 1:
            raise ConfigError("clean_ratio + poison_ratio must not exceed 1")
        if self.schedule == "cosine" and self.t_max < self.warmup_epochs + self.finetune_epochs:
            raise ConfigError(f"t_max {self.t_max} is shorter than warmup_epochs + finetune_epochs")


def intra_class_loss(features: Tensor, labels: Tensor) -> Tensor:
    """The official fine-tuning term: mean of the cosine-similarity matrix of the L2-normalised class means
    (classes present in the batch) with its diagonal zeroed; minimising it pushes class centroids apart."""
    features = at_least_float32(features)
    classes, inverse = labels.unique(return_inverse=True)
    if classes.numel() < 2:
        return features.sum() * 0
    sums = torch.zeros(classes.numel(), features.shape[1], device=features.device, dtype=features.dtype)
    sums.index_add_(0, inverse, features)
    means = F.normalize(sums / torch.bincount(inverse).unsqueeze(1).to(features.dtype), dim=1)
    with torch.autocast(features.device.type, enabled=False):  # float32 similarities under bf16 autocast
        sim = means @ means.T
    return (sim - torch.diag_embed(sim.diagonal())).mean()


def intra_loss_fn(weight: float, with_ce: bool = False) -> Callable[[nn.Module, Batch], Tensor]:
    """weight x the intra-class loss on the penultimate features (+ CE of the logits with `with_ce`)."""

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        feats = model.features(batch.x)  # type: ignore[operator]  # nn.Module.__getattr__: the model's features()
        intra = weight * intra_class_loss(feats, batch.y)
        return F.cross_entropy(model.head(feats), batch.y) + intra if with_ce else intra  # type: ignore[operator]

    return loss


SD_CHECKPOINTS = "sd_model"  # the SD model's trainer checkpoints, under the stage's checkpoint folder


def train_sd_model(model: nn.Module, data: ImageDataset, settings: SDSettings, *, seed: int = 0,
                   device: str = "auto", amp: AmpSetting = "auto", progress: bool = True,
                   checkpoint_dir: str | Path | None = None,
                   resume: bool = False) -> nn.Module:
    """Warm-up (plain CE, no augmentation) then intra-class fine-tuning: one trainer, so the SGD momentum and the
    cosine schedule (T_max epochs) carry over from the warm-up as in the official code."""
    s = settings
    total = s.warmup_epochs + s.finetune_epochs
    config = TrainConfig(epochs=s.t_max if s.schedule == "cosine" else total, batch_size=s.batch_size, lr=s.lr,
                         schedule=s.schedule, augment="none", device=device, amp=amp, progress=progress)
    trainer = Trainer(model, config, seed=seed,
                      checkpoint_dir=Path(checkpoint_dir) / SD_CHECKPOINTS if checkpoint_dir else None)
    trainer.fit(data, resume=resume, stop_after=s.warmup_epochs)
    if s.finetune_epochs:
        fine_tune = intra_loss_fn(s.intra_weight, with_ce=s.finetune_loss == "ce+intra")
        trainer.fit([(data, fine_tune)], resume=resume, stop_after=total)
    return model


def distinguish(model: nn.Module, data: ImageDataset, settings: SDSettings, *, seed: int = 0, train: bool = True,
                device: str = "auto", amp: AmpSetting = "auto", progress: bool = True,
                checkpoint_dir: str | Path | None = None, resume: bool = False) -> Split:
    """The SD module: (train `model` on `data` unless `train=False`), FCT-score every sample, split."""
    log.info("advml: SD module: %s%d + %d epochs, then FCT scores (%s, %d draws)", "" if train else "(trained) ",
             settings.warmup_epochs, settings.finetune_epochs, "+".join(settings.transforms), settings.draws)
    if train:
        train_sd_model(model, data, settings, seed=seed, device=device, amp=amp, progress=progress,
                       checkpoint_dir=checkpoint_dir, resume=resume)
    scores = fct_scores(model, data, transforms=settings.transforms, draws=settings.draws,
                        normalize=settings.normalize_features, seed=seed)
    split = split_by_score(scores, settings.clean_ratio, settings.poison_ratio, seed=seed)
    if (ties := split.tie_share()) > settings.clean_ratio:
        log.warning("advml: %.0f%% of the samples tie at D_c's highest FCT score (%.3g): D_c is a random draw "
                    "among them, not a ranking (collapsed features; the official threshold would take them all; "
                    "sd.finetune_loss: ce+intra keeps features alive)",
                    100 * ties, float(scores[split.clean].max()))
    return split


def fct_histogram(scores: Tensor, truth: Tensor, path: str | Path, *, title: str = "FCT scores",
                  split: Split | None = None, xlabel: str = "FCT score (feature change under the transform)") -> Path:
    """Histogram of FCT scores, clean and poisoned samples in two colours (log-spaced bins), as a PNG."""
    import numpy as np

    plt = pyplot()

    s = scores.double().clamp_min(1e-12).numpy()
    t = truth.bool().numpy()
    bins = np.logspace(np.log10(s.min()), np.log10(s.max() * 1.0001), 60)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(s[~t], bins=bins, alpha=0.6, color="tab:blue", label=f"clean ({(~t).sum()})")
    ax.hist(s[t], bins=bins, alpha=0.6, color="tab:red", label=f"poisoned ({t.sum()})")
    if split is not None:
        for idx, name in ((split.clean, "D_c"), (split.poisoned, "D_p")):
            if idx.numel():
                edge = s[idx.numpy()].max() if name == "D_c" else s[idx.numpy()].min()
                ax.axvline(edge, color="k", ls="--", lw=1)
                ax.text(edge, ax.get_ylim()[1] * 0.9, f" {name}", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)

