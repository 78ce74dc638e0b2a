"""Clean-label / label-consistent attack (Turner et al. 2019): PGD makes target-class images hard to
classify, then a 3x3 checkerboard goes in all four corners; labels are never changed."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from advml.backdoor.attacks.base import AttackSettings, BackdoorAttack
from advml.backdoor.poisoned import PoisonedDataset
from advml.backdoor.triggers import CORNERS, MaskTrigger, Trigger
from advml.config import Settings
from advml.data.base import ImageDataset, as_image_dataset
from advml.evasion import IterativeAttack
from advml.models import build_model
from advml.train import TrainConfig, Trainer


class SurrogateSettings(Settings):
    """The model trained on the clean data that PGD attacks (when no model is passed)."""

    model: str = "resnet18_narrow"
    epochs: int = Field(10, ge=1)
    lr: float = Field(0.05, gt=0)
    augment: str = "none"


class CleanLabelSettings(AttackSettings):
    """CL settings: PGD eps 8/255, step 2/255, 4 steps (the D-ST code); BackdoorBench uses 1.5/255 x 100."""

    rate: float = Field(0.1, gt=0, le=1, description="fraction of the TARGET CLASS's training images poisoned")
    eps: float = Field(8 / 255, gt=0, le=1, description="l-inf budget of the adversarial perturbation")
    step: float = Field(2 / 255, gt=0, le=1, description="PGD step size")
    steps: int = Field(4, ge=1, description="PGD iterations")
    size: int = Field(3, ge=1, description="side of each corner checkerboard")
    surrogate: SurrogateSettings = Field(default_factory=SurrogateSettings)


PRESETS: dict[str, dict[str, Any]] = {
    "dst": {},  # the defaults
    "backdoorbench": {"eps": 8 / 255, "step": 1.5 / 255, "steps": 100},
}


class CleanLabel(BackdoorAttack):
    """Clean-label: adversarially perturbed target-class images + four-corner checkerboards."""

    name = "clean_label"
    Settings = CleanLabelSettings
    clean_label = True
    rate_semantics = "fraction of the target class's training images (clean-label)"

    def __init__(self, settings: CleanLabelSettings | None = None, *, model: nn.Module | None = None,
                 **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.model = model  # a model trained on clean data; trained here from `surrogate` when None

    def build_trigger(self, image_shape: tuple[int, int, int]) -> Trigger:
        return MaskTrigger.union([MaskTrigger.checkerboard(image_shape, self.settings.size, c) for c in CORNERS])

    def _surrogate(self, train: ImageDataset, seed: int) -> nn.Module:
        s = self.settings.surrogate
        torch.manual_seed(seed)
        c, h, _ = train.image_shape
        model = build_model(s.model, train.num_classes, image_size=h, in_channels=c)
        Trainer(model, TrainConfig(epochs=s.epochs, lr=s.lr, augment=s.augment, progress=False), seed=seed) \
            .fit(train)
        return model

    def poison(self, train: ImageDataset, *, seed: int = 0) -> PoisonedDataset:
        """Poisoned set: PGD on the chosen target-class images against the clean model, then the trigger."""
        train = as_image_dataset(train)
        self._check_target(train.num_classes)
        idx = self.select(train.labels, seed)
        model = self.model if self.model is not None else self._surrogate(train, seed)
        s = self.settings
        pgd = IterativeAttack(model, eps=s.eps, step=s.step, iters=s.steps, random_start=True,
                              generator=torch.Generator().manual_seed(seed))
        device = next(model.parameters()).device
        adv = []
        for chunk in idx.split(256):
            x, y = train.get_batch(chunk)
            adv.append(pgd(x.to(device), y.to(device)).cpu())
        return PoisonedDataset(train, idx, self.trigger_for(train), train.labels[idx], train=True,
                               settings=self.describe(), perturbed=torch.cat(adv))
