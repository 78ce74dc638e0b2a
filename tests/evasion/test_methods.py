import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from advml.errors import ConfigError, UnknownNameError
from advml.evasion import IterativeAttack, compose, parse
from advml.evasion.methods import DI, MI, RAP, SI, TI, Admix
from advml.evasion.methods.translation import gaussian_kernel, scaled_kernel_size
from advml.models import build_model


class Counting(nn.Module):
    """Counts forward passes of the wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("cnn_small", 10).eval()


@pytest.fixture
def batch(sample):
    x, y = sample.test.get_batch(torch.arange(0, 500, 50))  # one image per class
    return x, y


def test_parse_and_bad_names():
    assert parse("mi-ti-di+rap-ls") == ["mi", "ti", "di", "rap-ls"]
    assert parse("MI-TI-DI-Admix") == ["mi", "ti", "di", "admix"]
    assert parse("ifgsm") == [] and parse("ifgsm+rap") == ["rap"]
    with pytest.raises(UnknownNameError, match="did you mean 'mi'"):
        parse("mii-ti")
    with pytest.raises(ConfigError, match="repeats"):
        parse("mi-mi")
    with pytest.raises(ConfigError, match="repeats"):
        parse("mi+rap+rap-ls")
    with pytest.raises(ConfigError, match="empty"):
        parse("")
    with pytest.raises(ConfigError, match="options for"):
        compose("mi", nn.Linear(1, 1), options={"ti": {"kernel": 3}})
    with pytest.raises(ConfigError, match="options.ti.kernal' \\(did you mean 'kernel'"):
        compose("ti", nn.Linear(1, 1), options={"ti": {"kernal": 3}})


@pytest.mark.parametrize("spec", ["ifgsm", "mi-ti-di", "mi-ti-di-si", "mi-ti-di-admix", "mi-ti-di+rap",
                                  "mi-ti-di-si+rap-ls", "mi-ti-di+rap-warm"])
def test_budget_and_range_hold_after_every_step(model, batch, spec):
    x, y = batch
    attack = compose(spec, model, eps=8 / 255, step=2 / 255, iters=6, record_at=tuple(range(1, 7)),
                     options={spec.split("+")[-1]: {"late_start": 2}} if "+rap-" in spec else None)
    adv = attack(x, y, (y + 1) % 10)
    for it, snap in attack.snapshots.items():
        assert (snap - x).abs().max() <= 8 / 255 + 1e-6, it
        assert snap.min() >= 0 and snap.max() <= 1
    assert torch.equal(adv, attack.snapshots[6])
    assert attack.name == spec


def test_ifgsm_equals_a_hand_written_loop(model, batch):
    x, y = batch
    t = (y + 3) % 10
    adv = compose("ifgsm", model, eps=16 / 255, step=2 / 255, iters=12)(x, y, t)
    d = torch.zeros_like(x)
    for _ in range(12):  # targeted I-FGSM written out: descend CE(target), project, keep pixels valid
        d.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x + d), t), d)
        d = (d - 2 / 255 * g.sign()).clamp(-16 / 255, 16 / 255)
        d = ((x + d).clamp(0, 1) - x).detach()
    assert torch.allclose(adv, x + d, atol=1e-6)
    with torch.no_grad():
        assert F.cross_entropy(model(adv), t) < F.cross_entropy(model(x), t)


def test_mi_normalises_and_accumulates():
    g1, g2 = torch.full((1, 1, 2, 2), 2.0), torch.tensor([[[[1.0, -3.0], [0.0, 4.0]]]])
    state = {}
    mi = MI(decay=0.5)
    assert torch.equal(mi.momentum(None, g1, state), torch.ones(1, 1, 2, 2))
    expected = g2 / 2.0 + 0.5 * torch.ones(1, 1, 2, 2)  # mean|g2| = 2
    assert torch.allclose(mi.momentum(None, g2, state), expected)


def test_ti_kernel_and_smoothing_by_hand():
    k = gaussian_kernel(3, nsig=3.0)
    pdf = torch.tensor([math.exp(-4.5), 1.0, math.exp(-4.5)], dtype=torch.float64)
    assert torch.allclose(k.double(), torch.outer(pdf, pdf) / torch.outer(pdf, pdf).sum(), atol=1e-7)
    assert scaled_kernel_size(5, 32) == 3 and scaled_kernel_size(15, 299) == 15 and scaled_kernel_size(15, 64) == 3
    g = torch.zeros(1, 2, 7, 7)
    g[0, :, 3, 3] = 1.0  # a delta: the smoothed gradient is the kernel itself
    out = TI(kernel=3, scale=False).grad(None, g)
    assert torch.allclose(out[0, 0, 2:5, 2:5], k) and torch.allclose(out[0, 1, 2:5, 2:5], k)
    assert out.sum() == pytest.approx(2.0)


def test_si_copies_by_hand():
    x, y = torch.full((2, 1, 2, 2), 0.8), torch.tensor([1, 2])
    xs, ys = SI(copies=3).expand(None, x, y)
    assert xs.shape == (6, 1, 2, 2) and ys.tolist() == [1, 2, 1, 2, 1, 2]
    assert xs[:, 0, 0, 0].tolist() == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.2])


def test_admix_mixes_in_an_other_class_image():
    attack = IterativeAttack(nn.Linear(1, 1))
    attack.true_labels = torch.tensor([0, 1])
    x = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 0.9)])
    attack.clean = x - 0.1  # the partners are the clean images, not the current adversarial ones
    xs, ys = Admix(copies=2, strength=0.2).mix(attack, x, torch.tensor([5, 6]))
    # each image can only take the other one: 0.5 + 0.2 * 0.8 and min(0.9 + 0.2 * 0.4, 1)
    assert xs[:, 0, 0, 0].tolist() == pytest.approx([0.66, 0.98, 0.66, 0.98])
    assert ys.tolist() == [5, 6, 5, 6]
    mixed, _ = Admix(copies=1, mode="mix").mix(attack, x + 0.1, torch.tensor([5, 6]))
    assert mixed[1, 0, 0, 0] == pytest.approx(1.08)  # 1.0 + 0.2 * 0.4, unclipped form
    scaled, sy = Admix(copies=1, scales=3).expand(attack, x, torch.tensor([5, 6]))
    assert scaled[:, 0, 0, 0].tolist() == pytest.approx([0.5, 0.9, 0.25, 0.45, 0.125, 0.225])
    assert sy.tolist() == [5, 6] * 3
    attack.true_labels = torch.tensor([0, 0])
    with pytest.raises(ConfigError, match="different class"):
        Admix().mix(attack, x, torch.tensor([5, 6]))
    with pytest.raises(ConfigError, match="scaled copies"):
        compose("si-admix", nn.Linear(1, 1))
    assert len(compose("si-admix", nn.Linear(1, 1), options={"admix": {"scales": 1}}).methods) == 2


def test_di_by_hand_with_the_same_random_numbers():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) / 400
    attack = IterativeAttack(nn.Linear(1, 1), generator=torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    parts = DI(prob=1.0, rate=1.5).transform(attack, [x, x / 2])
    r = torch.rand(2, 4, generator=replay).double()
    for out, xi, (a, b, c, _) in zip(parts, [x, x / 2], r.tolist()):
        top, rnd = 12, 8 + int(a * 4)  # resize to [8, 12), pad to 12 at a random offset in [0, 12 - rnd)
        up, left = int(b * (top - rnd)), int(c * (top - rnd))
        resized = F.interpolate(xi, size=(rnd, rnd), mode="nearest")
        expected = F.pad(resized, (left, top - rnd - left, up, top - rnd - up))
        assert torch.equal(out, expected)
    assert torch.equal(DI(prob=0.0).transform(attack, [x])[0], x)
    back = DI(prob=1.0, resize_back=True).transform(attack, [x])[0]
    assert back.shape == x.shape


def test_di_keeps_height_and_width_apart_on_a_non_square_batch():
    x = torch.rand(2, 3, 20, 40, generator=torch.Generator().manual_seed(0))
    attack = IterativeAttack(nn.Linear(1, 1), generator=torch.Generator().manual_seed(1))
    di = DI(prob=1.0, rate=1.2)
    params = di.draw(attack, 200, 20, 40)
    rnd_h, rnd_w, top, left = params[:, :4].T
    assert rnd_h.min() >= 20 and rnd_h.max() <= 23 and rnd_w.min() >= 40 and rnd_w.max() <= 47
    assert (top <= 24 - rnd_h - 1).all() and (left <= 48 - rnd_w - 1).all() and (top >= 0).all()
    out = di.apply(x, params[0])
    assert out.shape == (2, 3, 24, 48)
    h, w, t, lf = params[0, :4].tolist()
    inner = out[:, :, t:t + h, lf:lf + w]
    assert torch.equal(inner, F.interpolate(x, size=(h, w), mode="nearest"))
    assert DI(prob=1.0, rate=1.2, resize_back=True).apply(x, params[0]).shape == x.shape


def test_rap_inner_loop_raises_the_attack_loss(model, batch):
    x, y = batch
    t = (y + 1) % 10
    attack = IterativeAttack(model, methods=[RAP(eps_n=8 / 255, steps=4)])
    attack.true_labels, attack.targeted = y, True
    point = attack.methods[0].outer_point(attack, x, t, it=0)
    with torch.no_grad():
        assert F.cross_entropy(model(point), t) > F.cross_entropy(model(x), t)
    assert (point - x).abs().max() <= 8 / 255 + 1e-6


def test_no_inner_step_before_the_late_start(batch):
    x, y = batch
    torch.manual_seed(0)
    counted = Counting(build_model("cnn_small", 10).eval())
    rap = RAP(steps=8, late_start=3)
    compose("ifgsm", counted, iters=5)(x, y)
    assert counted.calls == 5  # one forward per iteration without RAP
    counted.calls = 0
    IterativeAttack(counted, iters=5, methods=[rap])(x, y, (y + 1) % 10)
    assert rap.inner_calls == 2 * 8 and counted.calls == 5 + 16
    warm = RAP(steps=8, late_start=0, warm=True, warm_steps=2)
    IterativeAttack(counted, iters=4, methods=[warm])(x, y)
    assert warm.inner_calls == 8 + 3 * 2


def test_bad_inputs(model):
    with pytest.raises(ConfigError, match="eps"):
        compose("mi", model, eps=2)
    with pytest.raises(ConfigError, match="prob"):
        compose("di", model, options={"di": {"prob": 2}})
    from advml.errors import InputError

    with pytest.raises(InputError, match="float"):
        compose("mi", model)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match="integer target"):
        compose("mi", model)(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), torch.zeros(2))
