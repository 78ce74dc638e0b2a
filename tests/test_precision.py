"""Mixed precision (amp: auto|true|false), the fast recipe's trainer parts (one-cycle, lookahead, norm-bias lr,
alternating flip, reflect padding, resident data, data-dependent init) and the AirNet model."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from advml.data.base import TensorImageDataset
from advml.data.batches import standard_augment
from advml.errors import ConfigError
from advml.models import build_model
from advml.train import TrainConfig, Trainer
from advml.utils import precision as P


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: [])


@pytest.fixture
def with_bf16(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: ["avx512_bf16"])


def test_auto_picks_bf16_only_where_the_cpu_has_bf16_units(no_bf16):
    cpu = torch.device("cpu")
    p = P.resolve_precision("auto", cpu)
    assert (p.amp, p.channels_last, p.dtype) == (False, False, "float32") and "no bf16" in p.reason
    forced = P.resolve_precision(True, cpu)
    assert forced.amp and forced.channels_last and forced.reason.startswith("forced on")
    assert not P.resolve_precision(False, cpu).amp
    assert not P.resolve_precision("auto", torch.device("meta")).amp


def test_auto_picks_bf16_where_the_cpu_has_it(with_bf16):
    p = P.resolve_precision("auto", torch.device("cpu"))
    assert p.amp and p.channels_last and "avx512_bf16" in p.reason
    assert P.resolve_precision(False, torch.device("cpu")).describe()["dtype"] == "float32"


def test_bad_amp_values_are_one_line_errors():
    for bad in ("maybe", 2, None, "bf16"):
        with pytest.raises(ConfigError, match="amp must be auto, true or false"):
            TrainConfig(amp=bad)
    assert TrainConfig(amp="false").amp is False and TrainConfig(amp="on").amp is True


def _toy(n: int = 256) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 4
    x = (torch.rand(n, 3, 16, 16, generator=g) * 0.3 + y.view(-1, 1, 1, 1) * 0.2)
    return TensorImageDataset((x * 255).round().to(torch.uint8), y, list("abcd"))


def _run(amp: bool, seed: int = 0) -> tuple[Trainer, list[float]]:
    torch.manual_seed(seed)
    model = build_model("resnet18_narrow", 4, image_size=16, width=4)
    t = Trainer(model, TrainConfig(epochs=3, batch_size=64, lr=0.05, amp=amp, progress=False), seed=seed)
    return t, [r["loss"] for r in t.fit(_toy())]


@pytest.mark.parametrize("amp", [True, False])
def test_bf16_and_float32_runs_train_and_are_deterministic(amp):
    t, losses = _run(amp)
    assert losses[-1] < losses[0]
    assert t.precision.amp is amp and t.model.precision.amp is amp
    conv = t.model.backbone[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) is amp
    again, losses2 = _run(amp)
    assert losses2 == losses
    assert all(torch.equal(a, b) for a, b in zip(t.model.state_dict().values(), again.model.state_dict().values()))


def test_a_bf16_model_returns_float32_and_matches_float32_closely():
    torch.manual_seed(0)
    m = build_model("resnet18_narrow", 4, image_size=16, width=4).eval()
    x = torch.rand(8, 3, 16, 16)
    ref = m(x)
    P.set_precision(m, P.Precision(True, True, "test"))
    out = m(x)
    assert out.dtype == torch.float32 and m.features(x).dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.1) and not torch.equal(out, ref)


def test_onecycle_schedule_and_norm_bias_group():
    c = TrainConfig(epochs=10, lr=2.0, schedule="onecycle", onecycle_start=0.2, onecycle_peak=0.25,
                    onecycle_end=0.1, norm_bias_lr_scale=64, weight_decay=0.01)
    t = Trainer(build_model("airnet", 10, widths=[8, 8, 8]), c)
    assert [t.lr_at(e) for e in (0, 1.25, 2.5, 10)] == pytest.approx([0.4, 1.2, 2.0, 0.2])
    assert t.lr_at(6.25) == pytest.approx(2.0 * (0.5 + 0.5 * 0.1))
    plain, shifts = t.optimizer.param_groups
    bn_biases = {id(m.bias) for m in t.model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in shifts["params"]} == bn_biases and not bn_biases & {id(p) for p in plain["params"]}
    t._set_lr(2.5)
    assert shifts["lr"] == pytest.approx(128.0) and plain["lr"] == pytest.approx(2.0)
    assert shifts["lr"] * shifts["weight_decay"] == pytest.approx(plain["lr"] * plain["weight_decay"])


def test_lookahead_ends_on_the_slow_weights_and_resumes_identically(tmp_path):
    def trainer(name: str) -> Trainer:
        torch.manual_seed(0)
        model = build_model("resnet18_narrow", 4, image_size=16, width=4)
        return Trainer(model, TrainConfig(epochs=2, batch_size=32, lr=0.05, lookahead_every=2, progress=False),
                       checkpoint_dir=tmp_path / name)

    full = trainer("full")
    full.fit(_toy())
    assert full.slow is not None and full.step == 16
    assert all(torch.equal(full.model.state_dict()[k], v) for k, v in full.slow.items())
    cut = trainer("cut")
    cut.fit(_toy(), stop_after=1)
    again = trainer("cut")
    again.fit(_toy(), resume=True)
    assert all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(), again.model.state_dict().values()))


def test_alternating_flip_mirrors_complementary_halves_in_successive_epochs():
    t = Trainer(torch.nn.Linear(1, 1), TrainConfig(flip="alternating"), seed=3)
    even = t._flips(1000, torch.device("cpu"))
    t.epoch = 1
    odd = t._flips(1000, torch.device("cpu"))
    assert torch.equal(even, ~odd) and 400 < int(even.sum()) < 600
    assert Trainer(torch.nn.Linear(1, 1), TrainConfig())._flips(10, torch.device("cpu")) is None


def test_reflect_padding_and_given_flips():
    x = torch.rand(16, 3, 8, 8)
    flip = torch.arange(16) % 2 == 0
    out = standard_augment(x, torch.Generator().manual_seed(0), 2, pad_mode="reflect", flip=flip, channels_last=True)
    padded = F.pad(x, (2,) * 4, mode="reflect")
    assert out.is_contiguous(memory_format=torch.channels_last)
    for i in range(16):
        src = padded[i].flip(-1) if flip[i] else padded[i]
        assert any(torch.equal(out[i], src[:, r:r + 8, c:c + 8]) for r in range(5) for c in range(5))


def test_resident_data_is_uint8_when_lossless_and_float_otherwise(sample):
    t = Trainer(torch.nn.Linear(1, 1), TrainConfig())
    part = sample.train.subset(range(40))
    res = t.resident(part)
    assert res.images.dtype == torch.uint8 and torch.equal(res.get_batch(torch.arange(40))[0],
                                                           part.get_batch(torch.arange(40))[0])
    from advml.backdoor import build_attack

    blended = build_attack({"name": "sig", "target": 0, "rate": 1.0}).poison(part, seed=0)
    res = t.resident(blended)
    assert res.images.dtype == torch.float32
    assert torch.equal(res.get_batch(torch.arange(40))[0], blended.get_batch(torch.arange(40))[0])
    assert torch.equal(res.labels, blended.labels)


def test_airnet_whitening_is_initialised_from_data_once(sample):
    torch.manual_seed(0)
    m = build_model("airnet", 10, widths=[8, 16, 16], mean=sample.mean, std=sample.std)
    assert m.needs_data_init
    Trainer(m, TrainConfig(epochs=1, batch_size=100, progress=False)).fit(sample.train.subset(range(200)))
    assert not m.needs_data_init
    w = m.backbone.whiten.weight.detach().clone()
    # the positive half of the filters whitens 2x2 patches: unit covariance on the images they came from
    x = m.normalize(sample.train.get_batch(torch.arange(200))[0]).float()
    patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 12)
    z = patches @ w[:12].reshape(12, 12).T
    cov = z.T @ z / len(z)  # the init saw these 200 images: diag(ev / (ev + eps)) in the eigenbasis
    ev = torch.linalg.eigvalsh(patches.T.double() @ patches.double() / len(patches)).flip(0).float()
    assert torch.allclose(cov, torch.diag(ev / (ev + 5e-4)), atol=1e-3)
    assert torch.equal(w[12:], -w[:12])
    Trainer(m, TrainConfig(epochs=1, batch_size=100, progress=False)).fit(sample.train.subset(range(200)))
    assert torch.equal(m.backbone.whiten.weight, w)  # a trained model is not re-initialised
    with pytest.raises(ConfigError, match="widths"):
        build_model("airnet", 10, widths=[8, 8])


def test_compile_falls_back_with_a_warning_where_unavailable(monkeypatch):
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.warns(UserWarning, match="torch.compile is not available"):
        t = Trainer(torch.nn.Linear(1, 1), TrainConfig(compile=True))
    assert not t.compiled


def test_train_amp_false_reaches_every_stage_of_a_defense_run(tmp_path, monkeypatch, with_bf16):
    from advml.experiments import load_settings, run_backdoor
    from advml.utils.io import load_json

    seen = []
    real = Trainer.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        seen.append(self.precision.amp)

    monkeypatch.setattr(Trainer, "__init__", spy)
    settings = load_settings(None, {"train_size": 200, "test_size": 60, "model": "cnn_small",
                                    "train": {"epochs": 1, "progress": False, "amp": False},
                                    "defense": {"name": "d-br", "epochs": 1,
                                                "sd": {"warmup_epochs": 1, "finetune_epochs": 1}}})
    run_backdoor(settings, tmp_path / "run")
    assert len(seen) >= 3 and not any(seen)  # backdoored model, SD model, D-BR
    timing = load_json(tmp_path / "run" / "timing.json")
    assert timing["precision"]["dtype"] == "float32" and timing["train"]["images_per_second"] > 0


def test_eval_every_evaluates_every_kth_and_the_last_epoch():
    torch.manual_seed(0)
    model = build_model("resnet18_narrow", 4, image_size=16, width=4)
    t = Trainer(model, TrainConfig(epochs=5, batch_size=64, lr=0.05, eval_every=2, progress=False))
    history = t.fit(_toy(), {"acc": _toy(32)})
    assert ["acc" in r for r in history] == [False, True, False, True, True]
