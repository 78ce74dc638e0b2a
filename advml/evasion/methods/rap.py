"""RAP (Qin et al., NeurIPS 2022): take the outer gradient at x_adv + n_rap, where n_rap is the worst
perturbation (l-inf eps_n) around x_adv found by a K-step inner PGD; RAP-LS starts it late. With Admix, one
n_rap per mixed image, computed on the mixed image (the official loop); SI's scaled copies share it."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from advml.config import Settings
from advml.errors import ConfigError
from advml.evasion.base import METHODS, IterativeAttack, Method


class RAPSettings(Settings):
    """RAP's settings; the defaults are the official `rap_attack.py`'s (eps_n 16/255, K 8, step eps_n / K)."""

    eps_n: float = Field(16 / 255, gt=0, le=1, description="l-inf radius of n_rap")
    steps: int = Field(8, ge=1, description="K: inner PGD steps per outer iteration")
    step_n: float | None = Field(None, gt=0, description="inner step size; None: eps_n / steps")
    late_start: int = Field(0, ge=0, description="outer iterations without RAP first (RAP-LS: 100)")
    warm: bool = Field(False, description="carry n_rap over between outer iterations")
    warm_steps: int = Field(2, ge=1, description="inner steps after the first iteration when warm")
    eps_n_ratio: float | None = Field(None, gt=0, le=16, description="eps_n as a multiple of the attack's eps "
                                      "(step eps_n / steps); replaces eps_n")

    def model_post_init(self, _: Any) -> None:
        if self.eps_n_ratio is not None and self.step_n is not None:
            raise ConfigError("rap: give step_n or eps_n_ratio (whose step is eps_n / steps), not both")


class RAPLSSettings(RAPSettings):
    """RAP-LS: RAP with a late start at iteration 100."""

    late_start: int = Field(100, ge=0, description="outer iterations without RAP first")


class RAPWarmSettings(RAPLSSettings):
    """RAP-LS whose n_rap is carried over between iterations."""

    warm: bool = Field(True, description="carry n_rap over between outer iterations")


@METHODS.register("rap", "reverse adversarial perturbation from the first iteration (eps_n 16/255, K 8)")
class RAP(Method):
    """Reverse adversarial perturbation. The inner loop uses plain CE (as the official code): targeted, it
    pushes away from the target; untargeted, it pulls toward the true label. `late_start` (RAP-LS: 100)
    skips RAP for the first iterations; `warm` carries n_rap over between outer iterations instead of
    restarting from a random point (`warm_steps` inner steps then). `eps_n_ratio` sets eps_n as a multiple of
    the attack's eps (the regime study's eps_n in {eps/2, eps, 2 eps}), and its step as eps_n / steps."""

    Settings: ClassVar[type[RAPSettings]] = RAPSettings
    settings: RAPSettings

    def __init__(self, settings: RAPSettings | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        s = self.settings
        self.eps_n = s.eps_n  # the radius and step in use (eps_n_ratio sets them from the attack's eps)
        self.step_n = s.step_n if s.step_n is not None else s.eps_n / s.steps
        self._n: Tensor | None = None
        self.inner_calls = 0  # forward-backward passes spent in the inner loop (for tests and benchmarks)

    def start(self, attack: IterativeAttack, x: Tensor) -> Tensor:
        """The inner loop's random start: uniform noise in [-eps_n, eps_n] (the official `uniform_`)."""
        return (2 * attack.rand(*x.shape, device=x.device).to(x.dtype) - 1) * self.eps_n

    def outer_point(self, attack: IterativeAttack, x: Tensor, goal: Tensor, it: int) -> Tensor:
        s = self.settings
        if it < s.late_start:
            return x
        if s.eps_n_ratio is not None:
            self.eps_n = min(s.eps_n_ratio * attack.eps, 1.0)
            self.step_n = self.eps_n / s.steps
        base = x.detach()
        # the official box: x + n stays in [0, 1] and within eps_n of x
        lo, hi = (base - self.eps_n).clamp(0, 1), (base + self.eps_n).clamp(0, 1)
        if it == 0 or self._n is None or self._n.shape != base.shape or not s.warm:
            p, steps = (base + self.start(attack, base)).clamp(0, 1), s.steps
        else:
            p, steps = torch.max(torch.min(base + self._n, hi), lo), s.warm_steps
        for _ in range(steps):
            # descend the attack objective (CE-based): the worst case for the attacker around x
            g = attack.loss_grad(p, goal, attack.targeted, loss="ce")
            self.inner_calls += 1
            p = torch.max(torch.min(p - self.step_n * g.sign(), hi), lo)
        self._n = p - base
        return x + self._n  # n_rap is a constant: the outer gradient reaches x as the identity


@METHODS.register("rap-ls")
class RAPLS(RAP):
    """RAP with a late start at iteration 100"""

    Settings = RAPLSSettings


@METHODS.register("rap-warm")
class RAPWarm(RAP):
    """RAP-LS whose n_rap is carried over between iterations (2 inner steps after the first)"""

    Settings = RAPWarmSettings
