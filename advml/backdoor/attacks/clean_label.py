"""Clean-label / label-consistent attack (Turner et al. 2019): PGD makes target-class images hard to
classify, then a 3x3 checkerboard goes in all four corners (EBD's fourCornerTrigger); labels are never changed."""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from pydantic import Field
from torch import Tensor, nn

from advml.backdoor.attacks.base import ATTACKS, AttackSettings, BackdoorAttack
from advml.backdoor.attacks.surrogate import SurrogateSettings, train_surrogate
from advml.backdoor.poisoned import PoisonedDataset
from advml.backdoor.triggers import CORNERS, MaskTrigger, Trigger
from advml.data.base import ImageDataset, as_image_dataset
from advml.errors import ConfigError
from advml.evasion import IterativeAttack


class CleanLabelSettings(AttackSettings):
    """CL settings: PGD eps 8/255, step 2/255, 4 steps (the D-ST code); BackdoorBench uses 1.5/255 x 100."""

    rate: float = Field(0.1, gt=0, le=1, description="fraction of the TARGET CLASS's training images poisoned")
    eps: float = Field(8 / 255, gt=0, le=1, description="l-inf budget of the adversarial perturbation")
    step: float = Field(2 / 255, gt=0, le=1, description="PGD step size")
    steps: int = Field(4, ge=1, description="PGD iterations")
    size: int = Field(3, ge=1, description="side of each corner checkerboard")
    corners: Literal["ebd", "flush"] = Field(
        "ebd", description="ebd: the D-ST code's fourCornerTrigger (EBD's grid, pixel facing the centre black, 1 px "
        "from the top and left edges); flush: full checkerboards flush with all four corners")
    surrogate: SurrogateSettings = Field(default_factory=SurrogateSettings)


PRESETS: dict[str, dict[str, Any]] = {
    "dst": {},  # the defaults
    "backdoorbench": {"eps": 8 / 255, "step": 1.5 / 255, "steps": 100},
}


@ATTACKS.register("clean_label", title="Clean-label")
class CleanLabel(BackdoorAttack):
    """Clean-label: PGD (8/255, 4 steps) on target-class images + four-corner checkerboards; rate = fraction of the
    TARGET CLASS

    Clean-label: adversarially perturbed target-class images + four-corner checkerboards."""

    Settings = CleanLabelSettings
    settings: CleanLabelSettings
    clean_label = True
    rate_semantics = "fraction of the target class's training images (clean-label)"

    def __init__(self, settings: CleanLabelSettings | None = None, *, model: nn.Module | None = None,
                 **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.model = model  # a model trained on clean data; trained here from `surrogate` when None

    def build_trigger(self, image_shape: tuple[int, int, int]) -> Trigger:
        if self.settings.corners == "ebd":
            return MaskTrigger.ebd_four_corners(image_shape, self.settings.size)
        return MaskTrigger.union([MaskTrigger.checkerboard(image_shape, self.settings.size, c) for c in CORNERS])

    def prepare(self, train: ImageDataset, seed: int) -> None:
        if self.model is None:
            self.model = train_surrogate(self.settings.surrogate, train, seed)
        self._seed = seed

    def adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        """PGD away from each image's own label against the clean model (seeded random start)."""
        if self.model is None:
            raise ConfigError("clean_label needs a clean model: pass model=... or call prepare(train, seed)")
        s = self.settings
        pgd = IterativeAttack(self.model, eps=s.eps, step=s.step, iters=s.steps, random_start=True,
                              generator=torch.Generator().manual_seed(getattr(self, "_seed", 0)))
        device = next(self.model.parameters()).device
        return torch.cat([pgd(xc.to(device), yc.to(device)).cpu() for xc, yc in zip(x.split(256), y.split(256))])

    def poison_images(self, x: Tensor, y: Tensor) -> Tensor:
        return self.trigger_for(cast(tuple[int, int, int], tuple(x.shape[1:]))).apply(
            self.adversarial(x, y), train=True)

    def poison(self, train: ImageDataset, *, seed: int = 0) -> PoisonedDataset:
        """Poisoned set: PGD on the chosen target-class images against the clean model, then the trigger."""
        train = as_image_dataset(train)
        self._check_target(train.num_classes)
        self.prepare(train, seed)
        idx = self.select(train.labels, seed)
        return PoisonedDataset(train, idx, self.trigger_for(train), train.labels[idx], train=True,
                               settings=self.describe(), perturbed=self.adversarial(*train.get_batch(idx)))
