"""Reference ports of TransferAttack (commit 2663e4a): PGN, `transferattack/gradient/pgn.py` lines 43-108, and
VMI-FGSM, `transferattack/gradient/vmifgsm.py` lines 42-97, with `Attack.get_loss` / `get_momentum` /
`update_delta` (`transferattack/attack.py` lines 110-153), re-expressed for one batch in float64.

The official neighbours come from `torch.zeros_like(delta).uniform_(-r, r)` on the device; here both runs use the
same draws (advml's uniform numbers are recorded and replayed into the port), and their distribution is checked
separately. The official loss is the mean CE (minus it when targeted); advml ascends the summed CE, which scales
every gradient of a batch by the same factor: PGN's look-ahead and MI's momentum normalise it away.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from advml.errors import ConfigError
from advml.evasion import compose
from advml.evasion.methods import PGN, VMI

TOL = 1e-10


# --- the port -------------------------------------------------------------------------------------------
def _loss(model, x, label, targeted):
    """attack.py `get_loss` (l. 110-115) with `nn.CrossEntropyLoss()`."""
    ce = F.cross_entropy(model(x), label)
    return -ce if targeted else ce


def _grad(model, x_of_delta, delta, label, targeted):
    """attack.py `get_grad`: d loss / d delta."""
    (g,) = torch.autograd.grad(_loss(model, x_of_delta(delta), label, targeted), delta)
    return g


def _momentum(grad, momentum, decay=1.0):
    """attack.py `get_momentum` (l. 124-128)."""
    return momentum * decay + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True)


def _update(delta, data, grad, alpha, epsilon):
    """attack.py `update_delta` (l. 145-153), l-inf."""
    delta = torch.clamp(delta + alpha * grad.sign(), -epsilon, epsilon)
    return torch.max(torch.min(delta, 1 - data), -data).detach().requires_grad_(True)


def official_pgn(model, data, label, uniforms, *, targeted, epsilon, epoch, beta=3.0, gamma=0.5, num_neighbor=20):
    """pgn.py l. 43-108; `uniforms` yields the U[0,1) numbers behind each `uniform_(-zeta, zeta)`."""
    alpha, zeta = epsilon / epoch, beta * epsilon
    delta = torch.zeros_like(data, requires_grad=True)
    momentum = 0
    for _ in range(epoch):
        averaged_gradient = 0
        for _ in range(num_neighbor):
            noise = (2 * next(uniforms) - 1) * zeta
            g_1 = _grad(model, lambda d: data + d + noise, delta, label, targeted)
            g_2 = _grad(model, lambda d: data + d + noise + alpha * (-g_1 / torch.abs(g_1).mean(dim=(1, 2, 3),
                                                                                               keepdim=True)),
                        delta, label, targeted)
            averaged_gradient = averaged_gradient + (1 - gamma) * g_1 + gamma * g_2
        averaged_gradient = averaged_gradient / num_neighbor
        momentum = _momentum(averaged_gradient, momentum)
        delta = _update(delta, data, momentum, alpha, epsilon)
    return (data + delta).detach()


def official_vmi(model, data, label, uniforms, *, targeted, epsilon, epoch, beta=1.5, num_neighbor=20):
    """vmifgsm.py l. 42-97 (its `alpha` given as epsilon / epoch, the official default)."""
    alpha, radius = epsilon / epoch, beta * epsilon
    delta = torch.zeros_like(data, requires_grad=True)
    momentum, variance = 0, 0
    for _ in range(epoch):
        grad = _grad(model, lambda d: data + d, delta, label, targeted)
        momentum = _momentum(grad + variance, momentum)
        neighbours = 0
        for _ in range(num_neighbor):
            noise = (2 * next(uniforms) - 1) * radius
            neighbours = neighbours + _grad(model, lambda d: data + d + noise, delta, label, targeted)
        variance = neighbours / num_neighbor - grad
        delta = _update(delta, data, momentum, alpha, epsilon)
    return (data + delta).detach()


# --- advml with its uniform numbers recorded ------------------------------------------------------------
def run_advml(spec, model, x, y, t, options, iters, eps):
    attack = compose(spec, model, eps=eps, step=eps / iters, iters=iters, loss="ce", options=options,
                     generator=torch.Generator().manual_seed(5))
    log = []
    rand = attack.rand

    def recorded(*shape, device=None):
        u = rand(*shape, device=device)
        log.append(u.double().clone())
        return u

    attack.rand = recorded
    adv = attack(x, y, t)
    return adv, attack, log


PORTS = {"pgn": (official_pgn, lambda iters, n: iters * n * 2),  # the ideal cost: two passes per neighbour
         "vmi": (official_vmi, lambda iters, n: iters * (1 + n))}  # one at x_adv, one per neighbour


@pytest.mark.parametrize("name", list(PORTS))
@pytest.mark.parametrize("targeted", [False, True])
def test_pgn_and_vmi_equal_the_official_loops(cifar, model, name, targeted):
    x, y = cifar[0][::20][:6], cifar[1][::20][:6]
    goal = (y + 3) % 10 if targeted else y
    iters, samples, eps = 4, 3, 16 / 255
    port, ideal_passes = PORTS[name]
    adv, attack, log = run_advml(f"mi-{name}", model, x, y, goal if targeted else None,
                                 {name: {"samples": samples}}, iters, eps)
    ref = port(model, x, goal, iter(log), targeted=targeted, epsilon=eps, epoch=iters, num_neighbor=samples)
    assert len(log) == iters * samples
    assert (adv - ref).abs().max() <= TOL
    assert (adv - x).abs().max() > 1 / 255
    assert attack.passes == ideal_passes(iters, samples)


def test_the_neighbours_are_uniform_in_the_official_radius(cifar, model):
    """The noise of each neighbour: U(-zeta eps, zeta eps) per pixel (PGN zeta 3), U(-1.5 eps, 1.5 eps) (VMI)."""
    x, y = cifar[0][:4], cifar[1][:4]
    eps = 8 / 255
    for spec, radius in (("mi-pgn", 3.0 * eps), ("mi-vmi", 1.5 * eps)):
        seen = []
        attack = compose(spec, model, eps=eps, step=eps / 2, iters=2, loss="ce")
        gradient = attack.outer_grad

        def spy(p, goal, targeted, it, _g=gradient):
            seen.append(p.detach().clone())
            return _g(p, goal, targeted, it)

        attack.outer_grad = spy
        attack(x, y)
        noise = torch.cat([s - x for s in seen[:1]]) if spec == "mi-pgn" else torch.cat([s - x for s in seen[1:21]])
        assert noise.abs().max() <= radius + 1e-6
        assert noise.abs().max() > 0.95 * radius and abs(noise.mean().item()) < 0.05 * radius
        assert abs(noise.abs().mean().item() - radius / 2) < 0.05 * radius  # E|U(-r, r)| = r / 2


def test_official_defaults_and_bad_settings():
    pgn, vmi = PGN(), VMI()
    assert (pgn.settings.samples, pgn.settings.zeta, pgn.settings.gamma) == (20, 3.0, 0.5)
    assert (vmi.settings.samples, vmi.settings.beta) == (20, 1.5)
    for bad in ({"samples": 0}, {"zeta": -1}, {"gamma": 2}):
        with pytest.raises(ConfigError):
            PGN(**bad)
    with pytest.raises(ConfigError, match="keep one"):
        compose("mi-pgn-vmi", None)


def test_pgn_composes_with_di_and_ti(cifar, model):
    """mi-ti-di-pgn: each neighbour's two gradients go through DI (a draw per pass) and the estimate through TI."""
    x, y = cifar[0][:4], cifar[1][:4]
    attack = compose("mi-ti-di-pgn", model, eps=8 / 255, step=2 / 255, iters=2, loss="ce",
                     options={"pgn": {"samples": 2}})
    adv = attack(x, y)
    assert attack.passes == 2 * 2 * 2 and (adv - x).abs().max() <= 8 / 255 + 1e-12
    again = compose("mi-ti-di-pgn", model, eps=8 / 255, step=2 / 255, iters=2, loss="ce",
                    options={"pgn": {"samples": 2}})(x, y)
    assert torch.equal(adv, again)  # seeded
