"""Gradient estimates from points sampled around x_adv: PGN (flat local maxima) and VMI (variance tuning).

Both replace the single outer gradient by a combination of outer gradients (each through DI, SI, Admix or RAP
when composed with them); MI then normalises and accumulates the estimate, TI smooths it. The papers' methods
are `mi-pgn` and `mi-vmi` (TransferAttack's PGN and VMIFGSM carry the momentum)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field
from torch import Tensor

from advml.config import Settings
from advml.evasion.base import METHODS, IterativeAttack, Method


def _neighbour(attack: IterativeAttack, x: Tensor, radius: float) -> Tensor:
    """x + uniform noise in [-radius, radius] per pixel (TransferAttack's `uniform_(-r, r)`), unclipped."""
    return x + (2 * attack.rand(*x.shape, device=x.device).to(x.dtype) - 1) * radius


class PGNSettings(Settings):
    """PGN's settings (official: 20 samples, zeta 3.0, gamma 0.5)."""

    samples: int = Field(20, ge=1, description="sampled neighbours per iteration")
    zeta: float = Field(3.0, ge=0, description="neighbourhood radius in units of eps")
    gamma: float = Field(0.5, ge=0, le=1, description="weight of the look-ahead gradient (the paper's delta)")


@METHODS.register("pgn", "penalised gradient norm: 20 neighbours at 3 eps, look-ahead mix 0.5 (with mi: PGN)")
class PGN(Method):
    """Penalizing gradient norm (Ge et al., NeurIPS 2023), as TransferAttack's `gradient/pgn.py`: per sample,
    g1 at x' = x_adv + U(-zeta*eps, zeta*eps), then g2 at x' - step * g1 / mean|g1| (a look-ahead against the
    objective, so that the finite difference penalises the gradient norm); the estimate is the mean of
    (1 - gamma) g1 + gamma g2 over the samples. Official: 20 samples, zeta 3.0, gamma 0.5, with MI (decay 1).
    Cost: 2 x samples outer passes per iteration."""

    Settings = PGNSettings
    settings: PGNSettings

    def estimate(self, attack: IterativeAttack, x_adv: Tensor, gradient: Callable[[Tensor], Tensor],
                 state: dict[str, Any]) -> Tensor:
        s = self.settings
        total = x_adv.new_zeros(x_adv.shape)
        for _ in range(s.samples):
            near = _neighbour(attack, x_adv, s.zeta * attack.eps)
            g1 = gradient(near)
            ahead = near - attack.step * g1 / g1.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)
            g2 = gradient(ahead)
            total += (1 - s.gamma) * g1 + s.gamma * g2
        return total / s.samples


class VMISettings(Settings):
    """VMI's settings (official: 20 samples, beta 1.5)."""

    samples: int = Field(20, ge=1, description="sampled neighbours per iteration")
    beta: float = Field(1.5, ge=0, description="neighbourhood radius in units of eps")


@METHODS.register("vmi", "variance tuning: 20 neighbours at 1.5 eps (with mi: VMI-FGSM)")
class VMI(Method):
    """Variance tuning (Wang & He, CVPR 2021), as TransferAttack's `gradient/vmifgsm.py`: the estimate is the
    gradient at x_adv plus the previous iteration's variance v, then v <- mean of the gradients at `samples`
    points x_adv + U(-beta*eps, beta*eps) minus the gradient at x_adv. Official: 20 samples, beta 1.5, with MI.
    Cost: 1 + samples outer passes per iteration."""

    Settings = VMISettings
    settings: VMISettings

    def estimate(self, attack: IterativeAttack, x_adv: Tensor, gradient: Callable[[Tensor], Tensor],
                 state: dict[str, Any]) -> Tensor:
        g = gradient(x_adv)
        variance = state.get("vmi")
        out = g if variance is None else g + variance
        s = self.settings
        total = x_adv.new_zeros(x_adv.shape)
        for _ in range(s.samples):
            total += gradient(_neighbour(attack, x_adv, s.beta * attack.eps))
        state["vmi"] = total / s.samples - g
        return out
