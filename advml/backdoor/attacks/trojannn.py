"""TrojanNN (Liu et al., NDSS 2018) trigger generation: pick the penultimate neurons most strongly connected
to the classifier and optimise the pixels inside a mask to drive them to a high activation, then poison."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from advml.backdoor.attacks.base import AttackSettings, BackdoorAttack
from advml.backdoor.attacks.surrogate import SurrogateSettings, train_surrogate
from advml.backdoor.triggers import MaskTrigger, Trigger, load_pattern
from advml.data.base import ImageDataset
from advml.errors import ConfigError


class TrojanNNSettings(AttackSettings):
    """Defaults after BackdoorBench's trojannn: apple mask, 2 neurons, target activation 100, 1000 iterations."""

    mask: str = Field("triggers/backdoorbench/trojannn/apple4.png",
                      description="mask image (non-zero = trigger area), resized to the data; path or under ADVML_DATA_DIR")
    neurons: int = Field(2, ge=1, description="penultimate neurons driven up")
    target_activation: float = Field(100.0, gt=0, description="activation the optimisation drives them to")
    iters: int = Field(1000, ge=1, description="optimisation steps on the masked pixels")
    lr: float = Field(0.1, gt=0, description="Adam step size on the pixels")
    batch: int = Field(32, ge=1, description="clean training images the trigger is optimised on")
    surrogate: SurrogateSettings = Field(default_factory=SurrogateSettings)


class TrojanNN(BackdoorAttack):
    """TrojanNN: a trigger generated from a clean model (trained here, or passed as `model=`), all2one."""

    name = "trojannn"
    Settings = TrojanNNSettings

    def __init__(self, settings: TrojanNNSettings | None = None, *, model: nn.Module | None = None,
                 **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.model = model
        self.report: dict[str, Any] = {}
        self._generated: MaskTrigger | None = None

    def prepare(self, train: ImageDataset, seed: int) -> None:
        if self._generated is None:
            if self.model is None:
                self.model = train_surrogate(self.settings.surrogate, train, seed)
            gen = torch.Generator().manual_seed(seed)
            pick = torch.randperm(len(train), generator=gen)[:self.settings.batch]
            self._generated = self.generate(train.get_batch(pick)[0], seed)

    def select_neurons(self) -> Tensor:
        """The penultimate neurons with the largest total |weight| into the classifier (TrojanNN's choice)."""
        head = getattr(self.model, "head", None)
        if not isinstance(head, nn.Linear) or not hasattr(self.model, "features"):
            raise ConfigError("trojannn needs a model with `features(x)` and a linear `head` (advml's models)")
        return head.weight.abs().sum(0).topk(self.settings.neurons).indices

    def generate(self, images: Tensor, seed: int) -> MaskTrigger:
        """Optimise the pixels inside the mask, stamped on clean `images`, so that the selected neurons reach
        the target activation. (On an otherwise black image, as in the paper, a neuron that starts at zero
        behind a ReLU gets no gradient; real images keep it alive.)"""
        s = self.settings
        image_shape = tuple(images.shape[1:])
        mask = (load_pattern(s.mask, image_shape).amax(0, keepdim=True) > 0.5).float()
        if mask.sum() == 0:
            raise ConfigError(f"the mask {s.mask} is empty at {image_shape[2]}x{image_shape[1]}")
        model = self.model.eval()
        device = next(model.parameters()).device
        neurons = self.select_neurons()
        for p in model.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(seed)
        pattern = torch.rand((1, *image_shape), generator=gen).to(device).requires_grad_(True)
        m, x = mask.to(device), images.to(device)

        def activation() -> Tensor:
            return model.features(torch.lerp(x, pattern, m))[:, neurons.to(device)].mean(0)

        with torch.no_grad():
            before = activation().mean().item()
        opt = torch.optim.Adam([pattern], lr=s.lr)
        for _ in range(s.iters):
            loss = (activation() - s.target_activation).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                pattern.clamp_(0, 1)
        with torch.no_grad():
            after = activation().mean().item()
        for p in model.parameters():
            p.requires_grad_(True)
        self.report = {"neurons": neurons.tolist(), "activation_before": before, "activation_after": after}
        return MaskTrigger((pattern.detach()[0] * m).cpu(), mask)

    def build_trigger(self, image_shape: tuple[int, int, int]) -> Trigger:
        if self._generated is None:
            raise ConfigError("trojannn's trigger is generated from a clean model: call poison() or "
                              "prepare(train, seed) first")
        if self._generated.shape != tuple(image_shape):
            raise ConfigError(f"trigger was generated for {self._generated.shape}, not {tuple(image_shape)}")
        return self._generated
