"""IterativeAttack: l-inf sign-gradient iterations (I-FGSM; PGD with `random_start`) built from hooks.

A transfer method (MI, TI, DI, SI, Admix, RAP) is a `Method` that overrides one or two hooks; an attack holds
a list of them, so methods compose (`compose("mi-ti-di+rap-ls", model)`). Sign convention: every hook works
on an objective that the attack *ascends* (CE of the true label, or minus CE of the target label).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from advml.component import Component
from advml.errors import ConfigError, InputError
from advml.registry import Registry
from advml.utils.checks import check_images, check_labels


class Method(Component):
    """One ingredient of an iterative attack; subclasses override only what differs.

    Per outer iteration the hooks run in the official loop's order (the RAP code's `rap_attack.py`): `mix`
    (Admix's m1 mixed images), `outer_point` (RAP's n_rap, one per mixed image), `expand` (SI's / Admix's m2
    scaled copies), `transform` (DI, one draw per copy), one forward-backward, `grad` (TI), `momentum` (MI).
    `estimate` (PGN, VMI) may take that gradient at several points around x_adv and combine them.
    Every term a hook adds to the input is a constant: the gradient reaches x_adv as the identity. A method's
    settings are its pydantic `Settings` (`compose`'s `options`, validated by name)."""

    name = "ifgsm"

    def estimate(self, attack: IterativeAttack, x_adv: Tensor, gradient: Callable[[Tensor], Tensor],
                 state: dict[str, Any]) -> Tensor:
        """The gradient used at x_adv; `gradient(p)` is the outer gradient (all other hooks but TI) at p."""
        return gradient(x_adv)

    def mix(self, attack: IterativeAttack, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mixed copies of each image (Admix), before RAP; returns (copies x N, ...) and their labels."""
        return x, y

    def outer_point(self, attack: IterativeAttack, x: Tensor, goal: Tensor, it: int) -> Tensor:
        """Where the outer gradient is taken (RAP moves each image to x + n_rap, n_rap constant)."""
        return x

    def expand(self, attack: IterativeAttack, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """More input copies per image (SI's scales); the loss averages over all copies."""
        return x, y

    def transform(self, attack: IterativeAttack, parts: list[Tensor]) -> list[Tensor]:
        """A random transformation of each copy (a batch of N images) before the forward pass (DI)."""
        return parts

    def grad(self, attack: IterativeAttack, g: Tensor) -> Tensor:
        """Post-process the gradient (TI smooths it)."""
        return g

    def momentum(self, attack: IterativeAttack, g: Tensor, state: dict[str, Any]) -> Tensor:
        """Turn the gradient into the step direction (MI accumulates)."""
        return g


class IterativeAttack:
    """Untargeted: maximise the loss of the true label; targeted: minimise that of the target label."""

    def __init__(self, model: nn.Module, *, eps: float = 16 / 255, step: float = 2 / 255, iters: int = 10,
                 loss: Literal["ce", "logit"] = "ce", random_start: bool = False,
                 methods: list[Method] | None = None, generator: torch.Generator | None = None,
                 record_at: tuple[int, ...] = (), spec: str | None = None) -> None:
        if not 0 < eps <= 1 or not 0 < step <= 1 or iters < 1:
            raise ConfigError(f"need 0 < eps <= 1, 0 < step <= 1, iters >= 1; got {eps}, {step}, {iters}")
        if loss not in ("ce", "logit"):
            raise ConfigError(f"unknown loss {loss!r}; valid: ce, logit")
        self.model, self.eps, self.step, self.iters = model, eps, step, iters
        self.loss_name, self.random_start = loss, random_start
        self.methods = list(methods or [])
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.record_at = tuple(record_at)
        self.snapshots: dict[int, Tensor] = {}  # iteration -> adversarial images, for `record_at`
        self.passes_at: dict[int, int] = {}  # iteration -> forward-backward passes per image so far, for `record_at`
        self.true_labels: Tensor | None = None  # the images' true labels during a call (Admix needs them)
        self.clean: Tensor | None = None  # the unperturbed images during a call (Admix's partners)
        self.targeted = False
        self.spec = spec
        self.passes = 0  # forward-backward passes per image since the last call began (cost accounting)

    @property
    def name(self) -> str:
        """The composed method's name."""
        return self.spec or "-".join(m.name for m in self.methods) or "ifgsm"

    def rand(self, *shape: int, device: torch.device | None = None) -> Tensor:
        """Uniform [0,1) numbers from the attack's seeded generator (drawn on the CPU for reproducibility)."""
        return torch.rand(shape, generator=self.generator).to(device) if device else torch.rand(
            shape, generator=self.generator)

    # --- hooks ----------------------------------------------------------------------------------------
    def init_delta(self, x: Tensor) -> Tensor:
        """Starting perturbation: zero, or uniform in the eps ball with `random_start`."""
        if not self.random_start:
            return torch.zeros_like(x)
        u = self.rand(*x.shape, device=x.device).to(x.dtype)
        return ((2 * u - 1) * self.eps).add_(x).clamp_(0, 1).sub_(x)

    def objective(self, logits: Tensor, labels: Tensor, targeted: bool, loss: str | None = None) -> Tensor:
        """What the attack ascends: CE (or the true logit's negative / the target logit), signed, summed."""
        if (loss or self.loss_name) == "logit":  # raise the target logit, or lower the true one
            picked = logits.gather(1, labels[:, None]).sum()
            return picked if targeted else -picked
        ce = F.cross_entropy(logits, labels, reduction="sum")
        return -ce if targeted else ce

    def loss_grad(self, point: Tensor, labels: Tensor, targeted: bool, *, loss: str | None = None) -> Tensor:
        """Gradient of the objective of the plain model at `point` (RAP's inner loop)."""
        with torch.enable_grad():  # also works under torch.no_grad()
            point = point.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.objective(self.model(point), labels, targeted, loss), point)
        self.passes += 1
        return g

    def grad(self, x_adv: Tensor, goal: Tensor, targeted: bool, it: int, state: dict[str, Any] | None = None
             ) -> Tensor:
        """The gradient estimate at x_adv (the outer gradient, or PGN's / VMI's combination), then TI."""
        state = {} if state is None else state
        estimators = [m for m in self.methods if type(m).estimate is not Method.estimate]
        if len(estimators) > 1:
            raise ConfigError(f"{' and '.join(m.name for m in estimators)} both replace the gradient estimate; "
                              "keep one")

        def gradient(p: Tensor) -> Tensor:
            return self.outer_grad(p, goal, targeted, it)

        g = estimators[0].estimate(self, x_adv, gradient, state) if estimators else gradient(x_adv)
        for m in self.methods:
            g = m.grad(self, g)
        return g

    def outer_grad(self, x_adv: Tensor, goal: Tensor, targeted: bool, it: int) -> Tensor:
        """The outer gradient at x_adv: through the methods' mixes, RAP point, copies and transforms, averaged."""
        with torch.enable_grad():
            point = x_adv.detach().requires_grad_(True)
            xs, ys = point, goal
            for m in self.methods:
                xs, ys = m.mix(self, xs, ys)
            for m in self.methods:
                xs = m.outer_point(self, xs, ys, it)
            for m in self.methods:
                xs, ys = m.expand(self, xs, ys)
            copies = xs.shape[0] // point.shape[0]
            parts, labels = list(xs.chunk(copies)), list(ys.chunk(copies))
            for m in self.methods:
                parts = m.transform(self, parts)
            obj = xs.new_zeros(())
            # one forward per input size (DI's enlarged copies, the untouched ones): in eval mode this equals
            # the official code's forward pass per copy
            for shape in dict.fromkeys(p.shape for p in parts):
                same = [i for i, p in enumerate(parts) if p.shape == shape]
                logits = self.model(torch.cat([parts[i] for i in same]))
                obj = obj + self.objective(logits, torch.cat([labels[i] for i in same]), targeted)
            (g,) = torch.autograd.grad(obj / copies, point)
        self.passes += copies
        return g

    def update(self, x: Tensor, delta: Tensor, direction: Tensor) -> Tensor:
        """Signed step, projected to the eps ball and to valid pixels."""
        delta = (delta + self.step * direction.sign()).clamp_(-self.eps, self.eps)
        return (x + delta).clamp_(0, 1) - x

    # --- the loop -------------------------------------------------------------------------------------
    def __call__(self, images: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
        """Adversarial images within eps (l-inf) of `images`; targeted when `targets` is given."""
        check_images(images, "images")
        for name, t in (("labels", labels), ("targets", targets)):
            if t is not None and (t.shape != images.shape[:1] or t.dtype not in (torch.int64, torch.int32)):
                raise InputError(f"need one integer {name[:-1]} per image, got {tuple(t.shape)} {t.dtype} "
                                 f"for {images.shape[0]} images")
            if t is not None and isinstance(getattr(self.model, "num_classes", None), int):
                check_labels(t, cast(int, self.model.num_classes), name)
        was_training = self.model.training
        self.model.eval()
        x = images.detach()
        self.true_labels, self.targeted = labels.to(x.device).long(), targets is not None
        self.clean = x
        goal = (targets if targets is not None else labels).to(x.device).long()
        state: dict[str, Any]
        delta, state = self.init_delta(x), {}
        self.snapshots, self.passes_at, self.passes = {}, {}, 0
        try:
            for it in range(self.iters):
                g = self.grad(x + delta, goal, self.targeted, it, state)
                for m in self.methods:
                    g = m.momentum(self, g, state)
                delta = self.update(x, delta, g)
                if it + 1 in self.record_at:
                    self.snapshots[it + 1] = (x + delta).detach().cpu()
                    self.passes_at[it + 1] = self.passes
        finally:
            self.model.train(was_training)
            self.true_labels = self.clean = None
        return (x + delta).detach()


METHODS: Registry[type[Method]] = Registry("transfer method")  # each method registers at its definition
