"""TrojanNN (Liu et al., NDSS 2018) trigger generation: pick the penultimate neurons most connected to the
mask region and optimise the pixels inside a mask to drive them to a high activation, then poison."""

from __future__ import annotations

from typing import Any, cast

import torch
from pydantic import Field
from torch import Tensor, nn

from advml.backdoor.attacks.base import ATTACKS, AttackSettings, BackdoorAttack
from advml.backdoor.attacks.surrogate import SurrogateSettings, train_surrogate
from advml.backdoor.triggers import MaskTrigger, Trigger, load_pattern
from advml.data.base import ImageDataset
from advml.errors import ConfigError


class TrojanNNSettings(AttackSettings):
    """Defaults after BackdoorBench's trojannn: apple mask, 2 neurons, target activation 100, 1000 iterations."""

    mask: str = Field("triggers/backdoorbench/trojannn/apple4.png",
                      description="mask image (non-zero = trigger area), resized to the data (a path; the "
                                  "default ships in the package)")
    neurons: int = Field(2, ge=1, description="penultimate neurons driven up")
    target_activation: float = Field(100.0, gt=0, description="activation the optimisation drives them to")
    iters: int = Field(1000, ge=1, description="optimisation steps on the masked pixels")
    lr: float = Field(0.1, gt=0, description="Adam step size on the pixels")
    surrogate: SurrogateSettings = Field(default_factory=SurrogateSettings)


@ATTACKS.register("trojannn", title="TrojanNN")
class TrojanNN(BackdoorAttack):
    """TrojanNN: trigger generated in a mask (apple) to excite 2 penultimate neurons of a clean model; rate = fraction
    of the whole training set

    TrojanNN: a trigger generated from a clean model (trained here, or passed as `model=`), all2one."""

    Settings = TrojanNNSettings
    settings: TrojanNNSettings

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
            self._generated = self.generate(train.image_shape, seed)

    def select_neurons(self, images: Tensor, mask: Tensor, gen: torch.Generator) -> Tensor:
        """The penultimate neurons most connected to the mask region: those whose activation moves most when
        the masked pixels of `images` are replaced by random ones (a neuron that never moves, e.g. one held at
        zero by its ReLU, could not be driven by the trigger)."""
        if not hasattr(self.model, "features"):
            raise ConfigError("trojannn needs a model with `features(x)` (advml's models do)")
        with torch.no_grad():
            base = cast(Any, self.model).features(images)  # any model with features(x) (checked above)
            moves = torch.stack([
                (cast(Any, self.model).features(torch.lerp(images, torch.rand(images.shape[1:], generator=gen)
                                                           .to(images.device), mask)) - base).abs().mean(0)
                for _ in range(8)]).mean(0)
        if int((moves > 0).sum()) < self.settings.neurons:
            raise ConfigError(f"only {int((moves > 0).sum())} penultimate neurons react to the mask region")
        return moves.topk(self.settings.neurons).indices

    def generate(self, image_shape: tuple[int, int, int], seed: int) -> MaskTrigger:
        """Optimise the pixels inside the mask, on an otherwise black image as in the paper, so that the
        selected neurons reach the target activation."""
        s = self.settings
        mask = (load_pattern(s.mask, image_shape).amax(0, keepdim=True) > 0.5).float()
        if mask.sum() == 0:
            raise ConfigError(f"the mask {s.mask} is empty at {image_shape[2]}x{image_shape[1]}")
        model = cast(nn.Module, self.model).eval()  # set by prepare (or passed)
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        neurons = self.select_neurons(torch.zeros((1, *image_shape), device=device), mask.to(device), gen)
        for p in model.parameters():
            p.requires_grad_(False)
        pattern = torch.rand((1, *image_shape), generator=gen).to(device).requires_grad_(True)
        m, x = mask.to(device), torch.zeros((1, *image_shape), device=device)

        def activation() -> Tensor:
            return model.features(torch.lerp(x, pattern, m))[:, neurons.to(device)].mean(0)  # type: ignore[operator]

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
