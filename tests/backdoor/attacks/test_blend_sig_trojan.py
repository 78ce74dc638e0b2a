import math

import numpy as np
import pytest
import torch
from PIL import Image

from advml.backdoor import build_attack
from advml.errors import ConfigError, DataError


@pytest.fixture
def images(sample):
    return sample.test.get_batch(torch.arange(16))[0]


def test_blend_strip_formula_by_hand(bundled_triggers, images):
    strip = np.load(bundled_triggers / "d-st/signal_cifar10_mask.npy").astype(np.float64) / 255  # (32, 32)
    expected = 0.8 * images.double().numpy() + 0.2 * strip[None, None]
    trig = build_attack("blend_strip").trigger_for(_Shape())
    assert np.allclose(trig.apply(images).numpy(), expected, atol=1e-6)


def test_blend_kitty_is_the_resized_kitty_at_alpha(bundled_triggers, images):
    kitty = Image.open(bundled_triggers / "d-st/hello_kitty.png").convert("RGB").resize((32, 32), Image.BILINEAR)
    kitty = torch.from_numpy(np.asarray(kitty).copy()).permute(2, 0, 1).float() / 255
    trig = build_attack("blend_kitty", alpha=1.0, test_alpha=1.0).trigger_for(_Shape())
    out = trig.apply(images)
    assert torch.equal(out[0], out[1])  # alpha 1 leaves only the pattern
    assert (out[0] - kitty).abs().mean() < 0.03  # PIL's and torchvision's resizing agree closely
    half = build_attack("blend_kitty", alpha=0.2).trigger_for(_Shape()).apply(images)
    assert torch.allclose(half, 0.8 * images + 0.2 * out[0], atol=1e-6)


def test_blend_train_and_test_alphas_differ_when_asked(images):
    trig = build_attack("blend_kitty", alpha=0.1, test_alpha=0.3).trigger_for(_Shape())
    d_train = (trig.apply(images, train=True) - images).abs().mean()
    d_test = (trig.apply(images, train=False) - images).abs().mean()
    assert d_test / d_train == pytest.approx(3.0, rel=1e-4)


def test_sig_formula_by_hand(images):
    j = np.arange(32)
    for train, delta in ((True, 40), (False, 60)):
        signal = delta / 255 * np.sin(2 * math.pi * j * 6 / 32)
        expected = np.clip(images.double().numpy() + signal[None, None, None, :], 0, 1)
        got = build_attack("sig").trigger_for(_Shape()).apply(images, train=train)
        assert np.allclose(got.numpy(), expected, atol=1e-6)


def test_sig_is_clean_label(sample):
    attack = build_attack("sig", target=2, rate=0.5)
    p = attack.poison(sample.train, seed=0)
    assert len(p.poison_indices) == round(0.5 * 200)  # a fraction of the target class
    assert (p.original_labels[p.poison_indices] == 2).all()
    assert torch.equal(p.labels, sample.train.labels)  # no label ever changes
    changed = (p.tensors()[0] != sample.train.tensors()[0]).flatten(1).any(1)
    assert torch.equal(changed, p.poison_flags)  # only target-class poisoned images changed
    bt = attack.backdoor_test_set(sample.test)
    assert len(bt) == 450 and bt.labels.eq(2).all()
    with pytest.raises(ConfigError, match="poisons no sample"):
        build_attack("sig", rate=0.001).poison(sample.train)  # 0.001 x 200 target images rounds to 0


def test_trojan_adds_then_clips_without_wrapping(bundled_triggers, images):
    trig_np = np.load(bundled_triggers / "d-st/best_square_trigger_cifar10.npz")["x"].astype(np.float64)
    expected = np.clip(images.double().numpy() * 255 + trig_np[None], 0, 255) / 255
    got = build_attack("trojan").trigger_for(_Shape()).apply(images)
    assert np.allclose(got.numpy(), expected, atol=1e-5)
    white = torch.ones(1, 3, 32, 32)
    assert build_attack("trojan").trigger_for(_Shape()).apply(white).min() == 1.0  # uint8 casting would wrap


def test_default_trigger_files_ship_in_the_package(sample, monkeypatch, tmp_path):
    monkeypatch.delenv("ADVML_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing relative to the working folder either
    for name in ("blend_kitty", "blend_strip", "trojan", "low_frequency"):
        assert len(build_attack(name).poison(sample.train).poison_indices) > 0
    with pytest.raises(DataError, match="ADVML_DATA_DIR"):
        build_attack("blend_kitty", image="triggers/mine.png").poison(sample.train)
    with pytest.raises(DataError, match="nope.npz"):
        build_attack("trojan", trigger_file="/nope.npz").poison(sample.train)


def test_bundled_files_equal_the_shared_ones(bundled_triggers, triggers_dir):
    files = sorted(p.relative_to(bundled_triggers) for p in bundled_triggers.rglob("*") if p.is_file())
    assert len(files) == 5
    for rel in files:
        assert (bundled_triggers / rel).read_bytes() == (triggers_dir / rel).read_bytes(), rel


class _Shape:
    image_shape = (3, 32, 32)
