"""Reference port of the RAP code: SCLBD/Transfer_attack_RAP `rap_attack.py` (commit 2112d88), the loop of
lines 312-447 (with `pgd`, lines 192-238, and `DI`, lines 175-189), re-expressed for one batch in float64.

It covers MI-TI-DI (`--MI --TI --DI`), -SI (`--SI --m2 5`), -Admix (`--SI --m1 3 --m2 5 --strength 0.2`: the
Admix paper's MTDAI composition), each with RAP (`--adv_perturbation --transpoint 0`) and RAP-LS
(`--transpoint T`). The official code draws its randomness from NumPy (DI, the Admix partners) and torch
(the inner loop's start); here both runs use the same draws: advml's are recorded and replayed into the port
("randomness fixed"), and the draws' distributions are checked against the official ones separately below.
Two deliberate generalisations: DI's 299 -> [299, 330) becomes H -> [H, floor(H * 330 / 299)), and Admix's
partners come from the batch (the official code reads them from its 1,000-image folder).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from advml.evasion import compose
from advml.evasion.methods import DI, RAP, Admix
from advml.evasion.methods.translation import gaussian_kernel

TOL = 1e-10


# --- the port -------------------------------------------------------------------------------------------
def official_di(x, rnd, pad_top, pad_left, apply, high):
    """rap_attack.py `DI` (l. 175-189) with its draws given: resize to rnd, zero-pad to `high` (330)."""
    h_rem = w_rem = high - rnd
    if not apply:  # the official `c <= 0.7`
        return x
    return F.pad(F.interpolate(x, size=(rnd, rnd)), (pad_left, w_rem - pad_left, pad_top, h_rem - pad_top),
                 mode="constant", value=0)


def official_pgd(model, data, labels, targeted, epsilon, k, a, start):
    """rap_attack.py `pgd` (l. 192-238), CE inner loss; `start` replaces `uniform_(-epsilon, epsilon)`."""
    data_max = (data + epsilon).clamp(0, 1)
    data_min = (data - epsilon).clamp(0, 1)
    perturbed = (data + start).clamp(0, 1).detach()
    for _ in range(k):
        perturbed.requires_grad_(True)
        ce = F.cross_entropy(model(perturbed), labels, reduction="sum")
        cost = ce if targeted else -ce
        (grad,) = torch.autograd.grad(cost, perturbed)
        with torch.no_grad():
            perturbed = perturbed - a * grad.sign()
            perturbed = torch.max(torch.min(perturbed, data_max), data_min)
    return perturbed.detach()


def official_attack(model, X_ori, labels, target_labels, draws, *, targeted, loss_function="CE", iters=6,
                    MI=False, DI=False, TI=False, SI=False, m1=1, m2=1, strength=0.0, adv_perturbation=False,
                    transpoint=0, adv_epsilon=16 / 255, adv_steps=8):
    """rap_attack.py l. 312-447 for one batch; `draws` yields the recorded partners, RAP starts and DI draws."""
    lr, epsilon = 2 / 255, 16
    high = max(math.floor(X_ori.shape[-1] * 330 / 299 + 1e-9), X_ori.shape[-1] + 1)
    kernel = gaussian_kernel(5, 3).to(X_ori.dtype)  # gkern(5, 3) as float32, l. 161-172
    gaussian = kernel.expand(3, 1, 5, 5)
    adv_targeted = 0 if targeted else 1
    delta = torch.zeros_like(X_ori)
    grad_pre = 0
    for t in range(iters):
        adv_activate = adv_perturbation and t >= transpoint
        partners = next(draws["partners"]) if strength else None  # (m1, n) indices into the batch
        starts = next(draws["rap"]).chunk(m1) if adv_activate else None  # one start per mixed image
        di = next(draws["di"]) if DI else None  # (m2 * m1, 5): copy j of mix q is row j * m1 + q
        grad_list = []
        for q in range(m1):
            if strength == 0:
                X_addin = torch.zeros_like(X_ori)
            else:
                assert (labels[partners[q]] != labels).all()  # the official `stop` condition
                X_addin = strength * X_ori[partners[q]]
                X_addin = torch.clamp(X_ori + delta + X_addin, min=0, max=1) - (X_ori + delta)
            if SI:
                if adv_activate:
                    label_pred = labels if adv_targeted else target_labels
                    X_advaug = official_pgd(model, X_ori + delta + X_addin, label_pred, adv_targeted, adv_epsilon,
                                            adv_steps, adv_epsilon / adv_steps, starts[q])
                    X_aug = X_advaug - (X_ori + delta + X_addin)
                else:
                    X_aug = torch.zeros_like(X_ori)
            for j in range(m2):
                if not SI:
                    assert m2 == 1, "advml's copies are SI's scales: RAP per copy needs --SI"
                    if adv_activate:
                        label_pred = labels if adv_targeted else target_labels
                        X_advaug = official_pgd(model, X_ori + delta + X_addin, label_pred, adv_targeted,
                                                adv_epsilon, adv_steps, adv_epsilon / adv_steps, starts[q])
                        X_aug = X_advaug - (X_ori + delta + X_addin)
                    else:
                        X_aug = torch.zeros_like(X_ori)
                d = delta.clone().requires_grad_(True)
                inputs = (X_ori + d + X_addin + X_aug) / 2**j if SI else X_ori + d + X_addin + X_aug
                if DI:
                    rnd_h, rnd_w, top, left, apply = di[j * m1 + q].tolist()
                    assert rnd_h == rnd_w
                    inputs = official_di(inputs, rnd_h, top, left, apply, high)
                logits = model(inputs)
                if loss_function == "CE":
                    ce = F.cross_entropy(logits, target_labels if targeted else labels, reduction="sum")
                    loss = ce if targeted else -ce
                else:  # MaxLogit
                    real = logits.gather(1, (target_labels if targeted else labels).unsqueeze(1)).squeeze(1)
                    loss = -real.sum() if targeted else real.sum()
                (grad_cc,) = torch.autograd.grad(loss, d)
                if TI:
                    grad_cc = F.conv2d(grad_cc, gaussian, bias=None, stride=1, padding=(2, 2), groups=3)
                grad_list.append(grad_cc)
        grad_c = sum(grad_list) / (m1 * m2)
        if MI:
            grad_c = grad_c / torch.mean(torch.abs(grad_c), (1, 2, 3), keepdim=True) + 1 * grad_pre
        grad_pre = grad_c
        delta = delta - lr * torch.sign(grad_c)
        delta = delta.clamp(-epsilon / 255, epsilon / 255)
        delta = (X_ori + delta).clamp(0, 1) - X_ori
    return X_ori + delta


# --- advml with its draws recorded ----------------------------------------------------------------------
def recorded(method, name: str, log: list) -> None:
    """Wrap `method.name` so that each result is appended to `log`."""
    original = getattr(method, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        log.append(out.detach().clone())
        return out

    setattr(method, name, wrapper)


def run_advml(spec, model, x, y, t, options, iters, loss):
    attack = compose(spec, model, eps=16 / 255, step=2 / 255, iters=iters, loss=loss, options=options,
                     generator=torch.Generator().manual_seed(3))
    logs = {"partners": [], "rap": [], "di": []}
    for m in attack.methods:
        for cls, hook, key in ((Admix, "draw", "partners"), (RAP, "start", "rap"), (DI, "draw", "di")):
            if isinstance(m, cls):
                recorded(m, hook, logs[key])
    adv = attack(x, y, t)
    return adv, {k: iter(v) for k, v in logs.items()}, logs


# MI-TI-DI and its SI and Admix forms, alone / +RAP / +RAP-LS; TI at the RAP code's 5x5 (unscaled)
CASES = {
    "mi-ti-di": dict(MI=True, TI=True, DI=True),
    "mi-ti-di-si": dict(MI=True, TI=True, DI=True, SI=True, m2=5),
    "mi-ti-di-admix": dict(MI=True, TI=True, DI=True, SI=True, m1=3, m2=5, strength=0.2),
}
RAPS = {"": {}, "+rap": dict(adv_perturbation=True, transpoint=0),
        "+rap-ls": dict(adv_perturbation=True, transpoint=3)}


@pytest.mark.parametrize("rap", list(RAPS))
@pytest.mark.parametrize("family", list(CASES))
@pytest.mark.parametrize("targeted,loss", [(True, "logit"), (False, "ce")])
def test_advml_equals_the_official_loop(cifar, model, family, rap, targeted, loss):
    x, y = cifar[0][::20][:6], cifar[1][::20][:6]  # six real test images of six classes
    t = (y + 3) % 10 if targeted else None
    options = {"ti": {"kernel": 5, "scale": False}}
    if rap:
        options[rap[1:]] = {"late_start": 3} if rap == "+rap-ls" else {}
    iters = 6
    adv, draws, logs = run_advml(family + rap, model, x, y, t, options, iters, loss)
    ref = official_attack(model, x, y, t, draws, targeted=targeted, loss_function="MaxLogit" if targeted else "CE",
                          iters=iters, **CASES[family], **RAPS[rap])
    assert (adv - ref).abs().max() <= TOL
    assert (adv - x).abs().max() > 1 / 255  # the attack moved
    assert len(logs["di"]) == iters and all(len(d) == CASES[family].get("m2", 1) * CASES[family].get("m1", 1)
                                            for d in logs["di"])  # a DI draw per copy and iteration
    if rap:
        late = RAPS[rap]["transpoint"]
        assert len(logs["rap"]) == iters - late  # one n_rap per mixed image: shape (m1 N, ...)
        assert logs["rap"][0].shape[0] == CASES[family].get("m1", 1) * x.shape[0]


def test_plain_rap_and_rap_ls_equal_the_official_loop(cifar, model):
    x, y = cifar[0][::20][:6], cifar[1][::20][:6]
    for spec, flags in (("ifgsm+rap", dict(adv_perturbation=True)),
                        ("ifgsm+rap-ls", dict(adv_perturbation=True, transpoint=2))):
        options = {"rap-ls": {"late_start": 2}} if "ls" in spec else None
        adv, draws, _ = run_advml(spec, model, x, y, None, options, 5, "ce")
        ref = official_attack(model, x, y, None, draws, targeted=False, iters=5, **flags)
        assert (adv - ref).abs().max() <= TOL


# --- the Admix gradient ---------------------------------------------------------------------------------
def test_admix_gradient_sees_the_partner_only_through_the_forward_mixture(cifar, model):
    """Two images of two classes, so each is the other's only partner. The gradient for image a must be the
    gradient at its own mixed copies with the partner term held constant (and passing the clip as the
    identity); perturbing the partner b may change it only through the mixture a + 0.2 b."""
    x, y = cifar[0][[0, 20]].clone(), cifar[1][[0, 20]]
    x[0, :, :8] = 0.97  # saturating pixels: clip(a + 0.2 b) = 1 there
    attack = compose("admix", model, options={"admix": {"copies": 2}})
    admix = attack.methods[0]
    scales = admix.settings.scales

    def advml_grad(images):
        attack.true_labels, attack.clean, attack.targeted = y, images, False
        return attack.grad(images, y, False, 0)

    def detached_partner_grad(a, b, label):
        mixed = (a + 0.2 * b).clamp(0, 1).detach().requires_grad_(True)
        total = sum(F.cross_entropy(model(mixed[None] / 2**j), label[None], reduction="sum") for j in range(scales))
        (g,) = torch.autograd.grad(total / scales, mixed)
        return g  # the gradient at the mixed point, straight through to a

    g = advml_grad(x)
    assert (g[0] - detached_partner_grad(x[0], x[1], y[0])).abs().max() <= TOL
    assert g[0][:, :8].abs().sum() > 0  # saturated pixels still get their gradient
    moved = x.clone()
    moved[1] = (moved[1] + 0.3 * torch.rand(moved[1].shape, generator=torch.Generator().manual_seed(0),
                                            dtype=x.dtype)).clamp(0, 1)
    g_moved = advml_grad(moved)
    assert (g_moved[0] - detached_partner_grad(x[0], moved[1], y[0])).abs().max() <= TOL


# --- the draws' distributions against the official ones -------------------------------------------------
def frequencies(values: np.ndarray, support: range) -> np.ndarray:
    return np.array([(values == v).mean() for v in support])


def test_di_draws_have_the_official_distribution():
    """The official DI: rnd ~ randint(299, 330), pad_top, pad_left ~ randint(0, 330 - rnd), applied iff
    rand() <= 0.7; advml's draws over 40,000 copies at H = 299 against NumPy's over as many."""
    from advml.evasion.base import IterativeAttack

    n = 40_000
    rng = np.random.default_rng(0)
    rnd = rng.integers(299, 330, n)
    top = np.array([rng.integers(0, 330 - r) for r in rnd[:5000]])
    applied = rng.random(n) <= 0.7
    attack = IterativeAttack(nn.Identity(), generator=torch.Generator().manual_seed(0))
    ours = DI().draw(attack, n, 299, 299).numpy()
    assert DI().padded_size(299) == 330
    assert ours[:, 0].min() == 299 and ours[:, 0].max() == 329 and (ours[:, 0] == ours[:, 1]).all()
    assert np.abs(frequencies(ours[:, 0], range(299, 330)) - frequencies(rnd, range(299, 330))).max() < 0.006
    assert ((ours[:, 2] >= 0) & (ours[:, 2] < 330 - ours[:, 0])).all()  # never the full remainder
    assert ((ours[:, 3] >= 0) & (ours[:, 3] < 330 - ours[:, 0])).all()
    # the pad given rnd is uniform: its share of the remainder has the official mean and spread
    share, official_share = ours[:5000, 2] / (330 - ours[:5000, 0]), top / (330 - rnd[:5000])
    assert abs(share.mean() - official_share.mean()) < 0.02 and abs(share.std() - official_share.std()) < 0.02
    assert abs(ours[:, 4].mean() - applied.mean()) < 0.01 and abs(ours[:, 4].mean() - 0.7) < 0.01


def test_admix_partners_have_the_official_distribution():
    """The official partners: resample all indices uniformly until no image shares its partner's class, i.e.
    each partner uniform over the other-class images, independently; advml's over 3,000 draws of 3 copies."""
    from advml.evasion.base import IterativeAttack

    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    attack = IterativeAttack(nn.Identity(), generator=torch.Generator().manual_seed(0))
    draws = torch.stack([Admix().draw(attack, labels) for _ in range(3000)]).numpy()  # (3000, 3, 6)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 6, (150_000, 6))  # the official rejection loop, pool = the batch, vectorised
    official = idx[(labels.numpy()[idx] != labels.numpy()).all(1)]
    assert len(official) > 5000
    for i in range(6):
        ours_i, off_i = draws[:, :, i].ravel(), official[:, i]
        others = (labels != labels[i]).double().numpy()
        exact = others / others.sum()  # uniform over the other-class images
        assert (labels.numpy()[ours_i] != labels[i].item()).all()
        assert np.abs(frequencies(ours_i, range(6)) - exact).max() < 5 * np.sqrt(0.25 / ours_i.size)
        assert np.abs(frequencies(off_i, range(6)) - exact).max() < 5 * np.sqrt(0.25 / off_i.size)
    # copies are independent draws: two copies agree as often as two independent uniform draws do
    same = (draws[:, 0, 0] == draws[:, 1, 0]).mean()
    assert abs(same - 1 / 4) < 0.04  # image 0 has four other-class candidates
