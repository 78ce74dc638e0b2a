"""Gradient estimates from points sampled around x_adv: PGN (flat local maxima) and VMI (variance tuning).

Both replace the single outer gradient by a combination of outer gradients (each through DI, SI, Admix or RAP
when composed with them); MI then normalises and accumulates the estimate, TI smooths it. The papers' methods
are `mi-pgn` and `mi-vmi` (TransferAttack's PGN and VMIFGSM carry the momentum)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from advml.errors import ConfigError
from advml.evasion.base import METHODS, IterativeAttack, Method


def _neighbour(attack: IterativeAttack, x: Tensor, radius: float) -> Tensor:
    """x + uniform noise in [-radius, radius] per pixel (TransferAttack's `uniform_(-r, r)`), unclipped."""
    return x + (2 * attack.rand(*x.shape, device=x.device).to(x.dtype) - 1) * radius


@METHODS.register("pgn", "penalised gradient norm: 20 neighbours at 3 eps, look-ahead mix 0.5 (with mi: PGN)")
class PGN(Method):
    """Penalizing gradient norm (Ge et al., NeurIPS 2023), as TransferAttack's `gradient/pgn.py`: per sample,
    g1 at x' = x_adv + U(-zeta*eps, zeta*eps), then g2 at x' - step * g1 / mean|g1| (a look-ahead against the
    objective, so that the finite difference penalises the gradient norm); the estimate is the mean of
    (1 - gamma) g1 + gamma g2 over the samples. Official: 20 samples, zeta 3.0, gamma 0.5, with MI (decay 1).
    Cost: 2 x samples outer passes per iteration."""

    def __init__(self, samples: int = 20, zeta: float = 3.0, gamma: float = 0.5) -> None:
        if samples < 1 or zeta < 0 or not 0 <= gamma <= 1:
            raise ConfigError(f"pgn needs samples >= 1, zeta >= 0, 0 <= gamma <= 1; got {samples}, {zeta}, {gamma}")
        self.samples, self.zeta, self.gamma = samples, zeta, gamma

    def estimate(self, attack: IterativeAttack, x_adv: Tensor, gradient: Callable[[Tensor], Tensor],
                 state: dict[str, Any]) -> Tensor:
        total = x_adv.new_zeros(x_adv.shape)
        for _ in range(self.samples):
            near = _neighbour(attack, x_adv, self.zeta * attack.eps)
            g1 = gradient(near)
            ahead = near - attack.step * g1 / g1.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)
            g2 = gradient(ahead)
            total += (1 - self.gamma) * g1 + self.gamma * g2
        return total / self.samples


@METHODS.register("vmi", "variance tuning: 20 neighbours at 1.5 eps (with mi: VMI-FGSM)")
class VMI(Method):
    """Variance tuning (Wang & He, CVPR 2021), as TransferAttack's `gradient/vmifgsm.py`: the estimate is the
    gradient at x_adv plus the previous iteration's variance v, then v <- mean of the gradients at `samples`
    points x_adv + U(-beta*eps, beta*eps) minus the gradient at x_adv. Official: 20 samples, beta 1.5, with MI.
    Cost: 1 + samples outer passes per iteration."""

    def __init__(self, samples: int = 20, beta: float = 1.5) -> None:
        if samples < 1 or beta < 0:
            raise ConfigError(f"vmi needs samples >= 1 and beta >= 0; got {samples}, {beta}")
        self.samples, self.beta = samples, beta

    def estimate(self, attack: IterativeAttack, x_adv: Tensor, gradient: Callable[[Tensor], Tensor],
                 state: dict[str, Any]) -> Tensor:
        g = gradient(x_adv)
        variance = state.get("vmi")
        out = g if variance is None else g + variance
        total = x_adv.new_zeros(x_adv.shape)
        for _ in range(self.samples):
            total += gradient(_neighbour(attack, x_adv, self.beta * attack.eps))
        state["vmi"] = total / self.samples - g
        return out
