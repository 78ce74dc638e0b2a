"""The clean model some attacks need (clean-label PGD, TrojanNN trigger generation), trained with the one
Trainer on the clean training data when the user does not pass one."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from advml.config import Settings
from advml.data.base import ImageDataset
from advml.data.registry import DatasetSplits
from advml.models import build_model
from advml.train import TrainConfig, Trainer


class SurrogateSettings(Settings):
    """The surrogate model and its (short, CPU-sized by default) training on clean data."""

    model: str = "resnet18_narrow"
    epochs: int = Field(10, ge=1)
    lr: float = Field(0.05, gt=0)
    augment: str = "none"


def train_surrogate(settings: SurrogateSettings, train: ImageDataset, seed: int) -> nn.Module:
    """A model trained on the clean `train` set, in eval mode."""
    torch.manual_seed(seed)
    c, h, _ = train.image_shape
    model = build_model(settings.model, train.num_classes, image_size=h, in_channels=c)
    config = TrainConfig(epochs=settings.epochs, lr=settings.lr, augment=settings.augment, progress=False)
    Trainer(model, config, seed=seed).fit(train)
    return model.eval()


def uses_surrogate(attack: Any) -> bool:
    """Whether an attack (class or instance) trains a clean model in `prepare()` unless it is handed one."""
    fields = getattr(attack.Settings, "model_fields", {})
    return "surrogate" in fields and fields["surrogate"].annotation is SurrogateSettings


def cached_surrogate(settings: SurrogateSettings, data: DatasetSplits, seed: int, *,
                     progress: bool = False) -> nn.Module:
    """The clean model of `settings` trained on `data.train`, through the model zoo's cache (trained once per
    dataset, architecture and settings, then loaded), in eval mode."""
    from advml.evasion.zoo import ZooSettings, zoo_model

    zoo = ZooSettings(epochs=settings.epochs, lr=settings.lr, augment=settings.augment, seed=seed,
                      train_size=len(data.train))
    model, _ = zoo_model(data, settings.model, zoo, progress=progress)
    return model.eval()
