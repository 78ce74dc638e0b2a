"""Shared parts of the poisoned-sample filters (Spectral Signatures, Activation Clustering): the backdoored
model's penultimate features of every training sample, a Split from the removed samples, and retraining a fresh
model on the kept ones with the one trainer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advml.backdoor.defenses.base import DefenseContext
from advml.backdoor.defenses.split import Split
from advml.data.base import ImageDataset
from advml.errors import ConfigError, InputError
from advml.metrics import map_batches
from advml.train import TrainConfig


def penultimate_features(model: nn.Module, data: ImageDataset, *, batch_size: int = 512) -> Tensor:
    """`model.features(x)` of every sample (float32, on CPU), in eval mode, batch by batch."""
    if not hasattr(model, "features"):
        raise InputError("the filter needs a model with a features(x) method (penultimate features)")
    return map_batches(model, data, lambda m, x, _y: m.features(x).float(),  # type: ignore[operator]  # duck-typed
                       batch_size=batch_size)


def split_from_removed(removed: Tensor, scores: Tensor) -> Split:
    """D_p = the removed samples, D_c = the kept ones (what the model is retrained on), D_u empty."""
    removed = removed.bool()
    if removed.numel() != scores.numel():
        raise InputError(f"{removed.numel()} flags for {scores.numel()} scores")
    return Split(clean=(~removed).nonzero().flatten(), poisoned=removed.nonzero().flatten(),
                 uncertain=torch.empty(0, dtype=torch.long), scores=scores.float().clone())


def retrain(train: ImageDataset, kept: Tensor, ctx: DefenseContext,
            config: TrainConfig | None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A fresh model (ctx.new_model()) trained on `train[kept]` with `config`, else the run's training settings."""
    if kept.numel() == 0:
        raise ConfigError("the filter removed every sample; nothing is left to retrain on")
    config = config or ctx.train_config or TrainConfig()
    config = config.model_copy(update={"device": ctx.device, "amp": ctx.amp, "progress": ctx.progress})
    model = ctx.new_model()
    history = ctx.trainer(model, "retrain", config).fit(train.subset(kept), resume=ctx.resume)
    return model, history
