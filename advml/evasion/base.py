"""IterativeAttack: l-inf sign-gradient iterations (I-FGSM; PGD with `random_start`), written as hooks
(init_delta, transform, loss, grad, momentum, update) so that MI/TI/DI/SI/Admix/RAP override one or two."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from advml.errors import ConfigError, InputError
from advml.utils.checks import check_images


class IterativeAttack:
    """Untargeted: maximise the loss of the true label; targeted: minimise that of the target label."""

    def __init__(self, model: nn.Module, *, eps: float = 16 / 255, step: float = 2 / 255, iters: int = 10,
                 loss: Literal["ce", "logit"] = "ce", random_start: bool = False,
                 generator: torch.Generator | None = None) -> None:
        if not 0 < eps <= 1 or not 0 < step <= 1 or iters < 1:
            raise ConfigError(f"need 0 < eps <= 1, 0 < step <= 1, iters >= 1; got {eps}, {step}, {iters}")
        if loss not in ("ce", "logit"):
            raise ConfigError(f"unknown loss {loss!r}; valid: ce, logit")
        self.model, self.eps, self.step, self.iters = model, eps, step, iters
        self.loss_name, self.random_start = loss, random_start
        self.generator = generator

    # --- hooks ----------------------------------------------------------------------------------------
    def init_delta(self, x: Tensor) -> Tensor:
        """Starting perturbation: zero, or uniform in the eps ball with `random_start`."""
        if not self.random_start:
            return torch.zeros_like(x)
        u = torch.rand(x.shape, generator=self.generator).to(x.device, x.dtype)
        return ((2 * u - 1) * self.eps).add_(x).clamp_(0, 1).sub_(x)

    def transform(self, x: Tensor, it: int) -> Tensor:
        """Input transformation before the forward pass (identity here; DI/SI/Admix override)."""
        return x

    def loss(self, logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
        """The objective to ascend: CE (or the negative target logit / the true logit) with the sign set."""
        if self.loss_name == "logit":  # raise the target logit, or lower the true one
            picked = logits.gather(1, labels[:, None]).sum()
            return picked if targeted else -picked
        ce = F.cross_entropy(logits, labels, reduction="sum")
        return -ce if targeted else ce

    def grad(self, x_adv: Tensor, labels: Tensor, targeted: bool, it: int) -> Tensor:
        """Gradient of the objective at x_adv (TI smooths it, RAP moves where it is taken)."""
        with torch.enable_grad():  # also works when called under torch.no_grad()
            x_adv = x_adv.detach().requires_grad_(True)
            obj = self.loss(self.model(self.transform(x_adv, it)), labels, targeted)
            (g,) = torch.autograd.grad(obj, x_adv)
        return g

    def momentum(self, g: Tensor, state: dict[str, Tensor]) -> Tensor:
        """Direction from the gradient (plain here; MI accumulates)."""
        return g

    def update(self, x: Tensor, delta: Tensor, direction: Tensor) -> Tensor:
        """Signed step, projected to the eps ball and to valid pixels."""
        delta = (delta + self.step * direction.sign()).clamp_(-self.eps, self.eps)
        return (x + delta).clamp_(0, 1) - x

    # --- the loop -------------------------------------------------------------------------------------
    def __call__(self, images: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
        """Adversarial images within eps (l-inf) of `images`; targeted when `targets` is given."""
        check_images(images, "images")
        if labels.shape != images.shape[:1]:
            raise InputError(f"need one label per image, got {tuple(labels.shape)} for {images.shape[0]} images")
        was_training = self.model.training
        self.model.eval()
        x = images.detach()
        goal = (targets if targets is not None else labels).to(x.device)
        delta, state = self.init_delta(x), {}
        for it in range(self.iters):
            g = self.grad(x + delta, goal, targets is not None, it)
            delta = self.update(x, delta, self.momentum(g, state))
        self.model.train(was_training)
        return (x + delta).detach()
