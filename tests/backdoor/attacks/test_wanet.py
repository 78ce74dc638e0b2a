import pytest
import torch
import torch.nn.functional as F

from advml.backdoor.attacks.wanet import WaNet, WaNetPoisonedDataset, noise_from_codes, warp_grid
from advml.errors import ConfigError, InputError


@pytest.fixture
def images(sample):
    return sample.test.get_batch(torch.arange(32))[0]


def _mean_abs(a, b):
    return (a - b).abs().flatten(1).mean(1)


def test_warp_is_a_pure_function_of_warp_seed(sample, images):
    a = WaNet(warp_seed=3).trigger_for(sample.test).apply(images)
    assert torch.equal(a, WaNet(warp_seed=3).trigger_for(sample.test).apply(images))
    assert not torch.equal(a, WaNet(warp_seed=4).trigger_for(sample.test).apply(images))
    # the poisoning seed picks samples, never the warp: the test-time trigger must match the training one
    p0, p1 = WaNet().poison(sample.train, seed=0), WaNet().poison(sample.train, seed=1)
    assert torch.equal(p0.trigger.grid, p1.trigger.grid)


def test_grid_matches_backdoorbench_formula_under_the_global_seed():
    # BackdoorBench (attack/wanet.py, utils/bd_img_transform/wanet.py) draws from torch's global RNG
    with torch.random.fork_rng():
        torch.manual_seed(7)
        ins = torch.rand(1, 2, 4, 4) * 2 - 1
        ins = ins / torch.mean(torch.abs(ins))
        noise_grid = F.interpolate(ins, size=32, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        array1d = torch.linspace(-1, 1, steps=32)
        x, y = torch.meshgrid(array1d, array1d, indexing="ij")
        identity_grid = torch.stack((y, x), 2)[None, ...]
        expected = torch.clamp((identity_grid + 0.5 * noise_grid / 32) * 1, -1, 1)
    assert torch.equal(warp_grid((3, 32, 32), k=4, s=0.5, grid_rescale=1, seed=7), expected)


def test_zero_strength_is_the_identity(sample, images):
    out = WaNet(s=0).trigger_for(sample.test).apply(images)
    assert torch.allclose(out, images, atol=1e-5)


def test_warp_is_small_but_visible(sample, images):
    out = WaNet().trigger_for(sample.test).apply(images)
    d = _mean_abs(out, images)
    assert (d > 0).all() and (d < 0.06).all()  # a sub-pixel-to-pixel shift, not a new image
    assert out.min() >= 0 and out.max() <= 1
    stronger = _mean_abs(WaNet(s=2).trigger_for(sample.test).apply(images), images)
    assert stronger.mean() > d.mean()


def test_warping_a_constant_image_leaves_it_constant(sample):
    x = torch.full((2, 3, 32, 32), 0.3)
    assert torch.allclose(WaNet(s=1).trigger_for(sample.test).apply(x), x, atol=1e-6)


def test_trigger_is_pure_and_rejects_other_sizes(sample, images):
    trig = WaNet().trigger_for(sample.test)
    before = images.clone()
    trig.apply(images)
    assert torch.equal(images, before)
    with pytest.raises(InputError, match="32x32"):
        trig.apply(torch.zeros(1, 3, 64, 64))
    if torch.cuda.is_available():
        assert torch.allclose(trig.apply(images.cuda()).cpu(), trig.apply(images), atol=1e-5)


@pytest.mark.parametrize("rate, cross_ratio", [(0.05, 2.0), (0.1, 2.0), (0.1, 0.5), (0.2, 1.3), (0.1, 0.0)])
def test_counts_labels_and_disjointness(sample, rate, cross_ratio):
    p = WaNet(target=1, rate=rate, cross_ratio=cross_ratio).poison(sample.train, seed=0)
    assert isinstance(p, WaNetPoisonedDataset)
    k = round(rate * 2000)
    assert len(p.poison_indices) == k == int(p.poison_flags.sum())
    assert len(p.cross_indices) == round(cross_ratio * k) == int(p.cross_flags.sum())
    assert not (p.poison_flags & p.cross_flags).any()  # poison_flags marks only relabelled samples
    assert p.labels[p.poison_indices].eq(1).all()
    assert torch.equal(p.labels[p.cross_indices], sample.train.labels[p.cross_indices])
    rest = (~(p.poison_flags | p.cross_flags)).nonzero().flatten()
    assert torch.equal(p.labels[rest], sample.train.labels[rest])


def test_images_of_each_kind_of_sample(sample):
    p = WaNet(rate=0.1).poison(sample.train, seed=0)
    clean, _ = sample.train.tensors()
    x, _ = p.tensors()
    warped = p.trigger.apply(clean)
    assert torch.equal(x[p.poison_indices], warped[p.poison_indices])
    rest = ~(p.poison_flags | p.cross_flags)
    assert torch.equal(x[rest], clean[rest])
    cross = p.cross_indices
    d_cross, d_warp = _mean_abs(x[cross], warped[cross]), _mean_abs(x[cross], clean[cross])
    assert (d_cross > 0).all() and (d_warp > 0).all() and (d_warp < 0.08).all()  # warp plus a little noise


def test_noise_mode_noise_differs_per_image(sample):
    p = WaNet(rate=0.1).poison(sample.train, seed=0)
    x = torch.full((2, 3, 32, 32), 0.5)
    x[:, :, :, ::2] = 0.1  # stripes, so that grid noise shows
    a = p.trigger.apply_noisy(x, noise_from_codes(p.cross_codes[:2]))
    assert not torch.equal(a[0], a[1])
    assert noise_from_codes(torch.tensor([0, 255], dtype=torch.uint8)).abs().max() < 1


def test_poisoned_set_is_a_pure_function_of_the_seed_and_index(sample):
    a = WaNet(rate=0.1).poison(sample.train, seed=5)
    b = WaNet(rate=0.1).poison(sample.train, seed=5)
    assert torch.equal(a.tensors()[0], b.tensors()[0]) and torch.equal(a.labels, b.labels)
    c = WaNet(rate=0.1).poison(sample.train, seed=6)
    assert not torch.equal(a.cross_indices, c.cross_indices)
    # a sample's noise belongs to its index, not to its position in the batch
    idx = a.cross_indices[:20]
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.get_batch(idx[perm])[0], a.get_batch(idx)[0][perm])
    assert torch.equal(a[int(idx[3])][0], a.get_batch(idx)[0][3])


def test_backdoor_test_set_is_the_plain_warp(sample):
    attack = WaNet(target=3, rate=0.1)
    bt = attack.backdoor_test_set(sample.test)
    assert len(bt) == 450 and bt.labels.eq(3).all() and bt.poison_flags.all()
    x, _ = bt.tensors()
    clean = sample.test.subset((sample.test.labels != 3).nonzero().flatten()).tensors()[0]
    assert torch.equal(x, attack.trigger_for(sample.test).apply(clean))


def test_impossible_settings_are_clear_errors(sample):
    with pytest.raises(ConfigError, match="noise-mode samples"):
        WaNet(rate=0.4, cross_ratio=2).poison(sample.train)
    for kwargs in ({"k": 1}, {"s": -0.1}, {"grid_rescale": 0}, {"cross_ratio": -1}, {"warp_seed": -1}):
        with pytest.raises(ConfigError):
            WaNet(**kwargs)
    with pytest.raises(ConfigError, match="exceeds the image size"):
        WaNet(k=40).poison(sample.train)
