"""RAP (Qin et al., NeurIPS 2022): take the outer gradient at x_adv + n_rap, where n_rap is the worst
perturbation (l-inf eps_n) around x_adv found by a K-step inner PGD; RAP-LS starts it late. With Admix, one
n_rap per mixed image, computed on the mixed image (the official loop); SI's scaled copies share it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advml.errors import ConfigError
from advml.evasion.base import METHODS, IterativeAttack, Method


@METHODS.register("rap", "reverse adversarial perturbation from the first iteration (eps_n 16/255, K 8)")
class RAP(Method):
    """Reverse adversarial perturbation. The inner loop uses plain CE (as the official code): targeted, it
    pushes away from the target; untargeted, it pulls toward the true label. `late_start` (RAP-LS: 100)
    skips RAP for the first iterations; `warm` carries n_rap over between outer iterations instead of
    restarting from a random point (`warm_steps` inner steps then). `eps_n_ratio` sets eps_n as a multiple of
    the attack's eps (the regime study's eps_n in {eps/2, eps, 2 eps}), and its step as eps_n / steps."""

    def __init__(self, eps_n: float = 16 / 255, steps: int = 8, step_n: float | None = None, late_start: int = 0,
                 warm: bool = False, warm_steps: int = 2, eps_n_ratio: float | None = None) -> None:
        if not 0 < eps_n <= 1 or steps < 1 or late_start < 0 or warm_steps < 1:
            raise ConfigError(f"rap needs 0 < eps_n <= 1, steps >= 1, late_start >= 0; got {eps_n}, {steps}, "
                              f"{late_start}")
        if eps_n_ratio is not None and not 0 < eps_n_ratio <= 16:
            raise ConfigError(f"rap eps_n_ratio must be in (0, 16], got {eps_n_ratio}")
        if eps_n_ratio is not None and step_n is not None:
            raise ConfigError("rap: give step_n or eps_n_ratio (whose step is eps_n / steps), not both")
        self.eps_n, self.steps, self.late_start, self.eps_n_ratio = eps_n, steps, late_start, eps_n_ratio
        self.step_n = step_n if step_n is not None else eps_n / steps
        self.warm, self.warm_steps = warm, warm_steps
        self._n: Tensor | None = None
        self.inner_calls = 0  # forward-backward passes spent in the inner loop (for tests and benchmarks)

    def start(self, attack: IterativeAttack, x: Tensor) -> Tensor:
        """The inner loop's random start: uniform noise in [-eps_n, eps_n] (the official `uniform_`)."""
        return (2 * attack.rand(*x.shape, device=x.device).to(x.dtype) - 1) * self.eps_n

    def outer_point(self, attack: IterativeAttack, x: Tensor, goal: Tensor, it: int) -> Tensor:
        if it < self.late_start:
            return x
        if self.eps_n_ratio is not None:
            self.eps_n = min(self.eps_n_ratio * attack.eps, 1.0)
            self.step_n = self.eps_n / self.steps
        base = x.detach()
        # the official box: x + n stays in [0, 1] and within eps_n of x
        lo, hi = (base - self.eps_n).clamp(0, 1), (base + self.eps_n).clamp(0, 1)
        if it == 0 or self._n is None or self._n.shape != base.shape or not self.warm:
            p, steps = (base + self.start(attack, base)).clamp(0, 1), self.steps
        else:
            p, steps = torch.max(torch.min(base + self._n, hi), lo), self.warm_steps
        for _ in range(steps):
            # descend the attack objective (CE-based): the worst case for the attacker around x
            g = attack.loss_grad(p, goal, attack.targeted, loss="ce")
            self.inner_calls += 1
            p = torch.max(torch.min(p - self.step_n * g.sign(), hi), lo)
        self._n = p - base
        return x + self._n  # n_rap is a constant: the outer gradient reaches x as the identity


@METHODS.register("rap-ls")
def rap_ls(**settings: Any) -> RAP:
    """RAP with a late start at iteration 100"""
    return RAP(**{"late_start": 100, **settings})


@METHODS.register("rap-warm")
def rap_warm(**settings: Any) -> RAP:
    """RAP-LS whose n_rap is carried over between iterations (2 inner steps after the first)"""
    return RAP(**{"late_start": 100, "warm": True, **settings})
