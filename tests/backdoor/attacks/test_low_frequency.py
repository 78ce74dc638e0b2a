import numpy as np
import pytest
import torch

from advml.backdoor.attacks.low_frequency import LowFrequency
from advml.errors import ConfigError, DataError, InputError

KEY = "cifar10_preactresnet18_0_255"


@pytest.fixture
def lf_file(bundled_triggers):
    return bundled_triggers / "backdoorbench/lowFrequency.npz"


@pytest.fixture
def images(sample):
    return sample.test.get_batch(torch.arange(16))[0]


def _smooth_pattern(h=32, w=32):
    """A uint8 (H,W,3) pattern in 0..51 like BackdoorBench's."""
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    base = 25.5 * (1 + np.sin(2 * np.pi * i / h) * np.cos(2 * np.pi * j / w))
    return np.stack([base, base[::-1], base[:, ::-1]], 2).round().astype(np.uint8)


def test_formula_by_hand_on_a_real_image(sample, lf_file):
    # BackdoorBench's SimpleAdditiveTrigger: clip(uint8 image + pattern, 0, 255) cast to uint8
    pattern = np.load(lf_file, allow_pickle=False)[KEY]
    img = sample.test.images[:8].permute(0, 2, 3, 1).numpy()  # uint8 NHWC
    expected = np.clip(img.astype(np.float64) + pattern.astype(np.float64), 0, 255).astype(np.uint8) / 255
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255
    got = LowFrequency(pattern_file=str(lf_file), key=KEY).trigger_for(sample.test).apply(x)
    assert np.allclose(got.permute(0, 2, 3, 1).numpy(), expected, atol=1e-6)


def test_linf_distance_is_the_pattern_maximum(sample, images, lf_file):
    pattern = np.load(lf_file, allow_pickle=False)[KEY]
    trig = LowFrequency(pattern_file=str(lf_file)).trigger_for(sample.test)
    out = trig.apply(images)
    assert (out - images).abs().max() <= pattern.max() / 255 + 1e-6
    gray = torch.full((1, 3, 32, 32), 0.5)  # nothing clips: the change is the pattern itself
    diff = trig.apply(gray) - gray
    assert diff.abs().max().item() == pytest.approx(pattern.max() / 255, abs=1e-6) == pytest.approx(0.2)
    assert np.allclose(diff[0].permute(1, 2, 0).numpy(), pattern / 255, atol=1e-6)


def test_default_file_is_the_bundled_one(sample, images, lf_file):
    a = LowFrequency().trigger_for(sample.test).apply(images)
    assert torch.equal(a, LowFrequency(pattern_file=str(lf_file)).trigger_for(sample.test).apply(images))


def test_float_keys_of_the_real_file(sample, lf_file):
    raw = np.load(lf_file, allow_pickle=False)["cifar10_vgg19_bn_0_255"]  # (1,32,32,3) float32 in 0..0.2
    assert raw.shape == (1, 32, 32, 3) and raw.dtype == np.float32
    gray = torch.full((1, 3, 32, 32), 0.5)
    auto = LowFrequency(key="cifar10_vgg19_bn_0_255").trigger_for(sample.test).apply(gray) - gray
    assert np.allclose(auto[0].permute(1, 2, 0).numpy(), raw[0], atol=1e-6)
    literal = LowFrequency(key="cifar10_vgg19_bn_0_255", pattern_range="0_255").trigger_for(sample.test)
    assert np.allclose((literal.apply(gray) - gray)[0].permute(1, 2, 0).numpy(), raw[0] / 255, atol=1e-6)


def test_both_dtype_layouts_give_the_same_trigger(tmp_path, sample, images):
    u8 = _smooth_pattern()
    path = tmp_path / "lf.npz"
    np.savez(path, a_0_255=u8, b_0_255=(u8[None].astype(np.float32) / 255), c_0_255=u8[..., 0])
    out = {k: LowFrequency(pattern_file=str(path), key=k).trigger_for(sample.test).apply(images)
           for k in ("a_0_255", "b_0_255", "c_0_255")}
    assert torch.allclose(out["a_0_255"], out["b_0_255"], atol=1e-6)
    expected = np.clip(images.double().numpy() + u8[..., 0][None, None] / 255, 0, 1)  # (H,W): every channel
    assert np.allclose(out["c_0_255"].numpy(), expected, atol=1e-6)
    np.save(tmp_path / "one.npy", u8)  # a single BackdoorBench .npy: the key is not needed
    one = LowFrequency(pattern_file=str(tmp_path / "one.npy")).trigger_for(sample.test).apply(images)
    assert torch.equal(one, out["a_0_255"])


def test_poisoning_changes_only_poisoned_images(tmp_path, sample):
    np.savez(tmp_path / "lf.npz", k=_smooth_pattern())
    p = LowFrequency(pattern_file=str(tmp_path / "lf.npz"), key="k", rate=0.1, target=2).poison(sample.train, seed=0)
    assert len(p.poison_indices) == 200 and p.labels[p.poison_indices].eq(2).all()
    changed = (p.tensors()[0] != sample.train.tensors()[0]).flatten(1).any(1)
    assert not changed[~p.poison_flags].any() and changed[p.poison_flags].all()


def test_size_mismatch_is_an_input_error(tmp_path, sample):
    np.savez(tmp_path / "lf.npz", small=_smooth_pattern(), large=_smooth_pattern(64, 64))
    with pytest.raises(InputError, match="64x64"):
        LowFrequency(pattern_file=str(tmp_path / "lf.npz"), key="large").poison(sample.train)
    trig = LowFrequency(pattern_file=str(tmp_path / "lf.npz"), key="small").trigger_for(sample.test)
    with pytest.raises(InputError, match="shape"):
        trig.apply(torch.zeros(1, 3, 64, 64))


def test_real_tiny_imagenet_key_does_not_fit_cifar(sample, lf_file):
    with pytest.raises(InputError, match="tiny is 64x64"):
        LowFrequency(key="tiny_preactresnet18_0_255").poison(sample.train)


def test_missing_file_key_or_bad_array_are_data_errors(tmp_path, sample):
    with pytest.raises(DataError, match="not found"):
        LowFrequency(pattern_file=str(tmp_path / "absent.npz")).poison(sample.train)
    np.savez(tmp_path / "lf.npz", k=_smooth_pattern(), bad=np.zeros((2, 32, 32, 3)), big=np.full((32, 32, 3), 300.0))
    with pytest.raises(DataError, match="available: bad, big, k"):
        LowFrequency(pattern_file=str(tmp_path / "lf.npz"), key="nope").poison(sample.train)
    with pytest.raises(DataError, match="shape"):
        LowFrequency(pattern_file=str(tmp_path / "lf.npz"), key="bad").poison(sample.train)
    with pytest.raises(DataError, match="exceeds"):
        LowFrequency(pattern_file=str(tmp_path / "lf.npz"), key="big").poison(sample.train)
    with pytest.raises(ConfigError):
        LowFrequency(pattern_range="0_65535")
