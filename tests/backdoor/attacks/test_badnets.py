import numpy as np
import pytest
import torch

from advml.backdoor import BadNets, MaskTrigger, build_attack
from advml.errors import ConfigError, InputError
from advml.utils.io import load_image


def test_badnets_changes_exactly_the_patch_pixels(sample):
    attack = BadNets(target=0, rate=0.1)
    poisoned = attack.poison(sample.train, seed=0)
    idx = poisoned.poison_indices
    clean, _ = sample.train.get_batch(idx)
    dirty, labels = poisoned.get_batch(idx)
    changed = (dirty != clean).any(0).any(0)  # (H, W): pixels changed in any image or channel
    assert changed[:29].sum() == 0 and changed[:, :29].sum() == 0  # nothing outside the 3x3 corner
    assert torch.all(dirty[:, :, 29:, 29:] == 1.0)
    assert torch.equal(dirty[:, :, :29], clean[:, :, :29]) and torch.equal(dirty[:, :, :, :29], clean[:, :, :, :29])
    assert labels.eq(0).all()


def test_clean_samples_are_unchanged(sample):
    poisoned = BadNets(rate=0.1).poison(sample.train, seed=0)
    rest = (~poisoned.poison_flags).nonzero().flatten()
    assert torch.equal(poisoned.get_batch(rest)[0], sample.train.get_batch(rest)[0])
    assert torch.equal(poisoned.labels[rest], sample.train.labels[rest])


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.1, 0.333, 0.5])
def test_poisoned_count_is_round_rate_times_n(sample, rate):
    p = BadNets(rate=rate).poison(sample.train, seed=0)
    assert len(p.poison_indices) == round(rate * 2000) == int(p.poison_flags.sum())
    assert (p.original_labels[p.poison_indices] != 0).all()  # all2one draws from non-target samples


def test_same_seed_same_indices(sample):
    a = BadNets().poison(sample.train, seed=5).poison_indices
    assert torch.equal(a, BadNets().poison(sample.train, seed=5).poison_indices)
    assert not torch.equal(a, BadNets().poison(sample.train, seed=6).poison_indices)


def test_all2all_label_map(sample):
    p = BadNets(mode="all2all", rate=0.2).poison(sample.train, seed=0)
    orig = p.original_labels[p.poison_indices]
    assert torch.equal(p.labels[p.poison_indices], (orig + 1) % 10)
    assert set(orig.tolist()) == set(range(10))  # every class can be poisoned
    bt = BadNets(mode="all2all").backdoor_test_set(sample.test)
    assert len(bt) == 500 and torch.equal(bt.labels, (sample.test.labels + 1) % 10)


def test_backdoor_test_set_is_every_non_target_image_triggered(sample):
    bt = BadNets(target=3).backdoor_test_set(sample.test)
    assert len(bt) == 450 and bt.labels.eq(3).all() and bt.poison_flags.all()
    x, _ = bt.get_batch(torch.arange(len(bt)))
    assert torch.all(x[:, :, 29:, 29:] == 1.0)


def test_checkerboard_matches_backdoorbench_grid_file(triggers_dir):
    grid = load_image(triggers_dir / "backdoorbench/badnet/trigger_image_grid.png")
    ours = MaskTrigger.checkerboard((3, 32, 32))
    x = torch.zeros(1, 3, 32, 32)
    expected = torch.from_numpy(np.where(grid >= 128, 1.0, 0.0)).permute(2, 0, 1).float()
    assert torch.equal(ours.apply(x)[0], expected)


def test_ebd_grid_equals_ebd_s_grid_trigger(sample):
    """EBD utils/dataloader_bd.py `_gridTriger` l. 423-437 on HWC uint8 images (img[row][col])."""
    x, _ = sample.test.get_batch(torch.arange(6))
    hwc = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().copy()
    w, h = 32, 32
    for img in hwc:
        img[w - 1][h - 1], img[w - 1][h - 2], img[w - 1][h - 3] = 255, 0, 255
        img[w - 2][h - 1], img[w - 2][h - 2], img[w - 2][h - 3] = 0, 255, 0
        img[w - 3][h - 1], img[w - 3][h - 2], img[w - 3][h - 3] = 255, 0, 0
    official = torch.from_numpy(hwc).permute(0, 3, 1, 2)
    ours = build_attack("badnets", pattern="ebd_grid").trigger_for(sample.test).apply(x)
    assert torch.equal((ours * 255).round().to(torch.uint8), official)
    grid = MaskTrigger.checkerboard((3, 32, 32)).apply(x)  # BackdoorBench's grid: one pixel apart
    assert torch.equal((grid != ours).any(1).sum(dim=(1, 2)), (x[:, :, 29, 29] != 1).any(1).long())


def test_file_trigger_equals_the_built_in_square(triggers_dir, sample):
    x, _ = sample.test.get_batch(torch.arange(8))
    f = build_attack("badnets", pattern="file", image=str(triggers_dir / "backdoorbench/badnet/trigger_image.png"))
    assert torch.equal(f.trigger_for(sample.test).apply(x), MaskTrigger.square((3, 32, 32)).apply(x))
    with pytest.raises(InputError, match="224x224"):
        build_attack("badnets", pattern="file", image=str(triggers_dir / "backdoor-toolbox/badnet_patch_224.png")) \
            .poison(sample.train)


def test_trigger_applies_to_batches_on_any_device_and_is_pure(sample):
    trig = MaskTrigger.square((3, 32, 32), size=4, corner="top_left", margin=1)
    x, _ = sample.test.get_batch(torch.arange(16))
    before = x.clone()
    y = trig.apply(x)
    assert torch.equal(x, before)  # input untouched
    assert torch.all(y[:, :, 1:5, 1:5] == 1) and torch.equal(y[:, :, 5:], x[:, :, 5:])
    if torch.cuda.is_available():
        assert torch.equal(trig.apply(x.cuda()).cpu(), y)


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": 0}, "greater than 0"),
    ({"rate": 1.5}, "less than or equal to 1"),
    ({"rate": -0.1}, "greater than 0"),
    ({"target": -1}, "greater than or equal to 0"),
    ({"mode": "all2some"}, "all2one"),
    ({"pattern": "star"}, "square"),
    ({"sizes": 3}, "did you mean 'size'"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BadNets(**kwargs)


def test_target_out_of_range_and_impossible_rates(sample):
    with pytest.raises(ConfigError, match=r"target label 10 is outside \[0, 10\)"):
        BadNets(target=10).poison(sample.train)
    with pytest.raises(ConfigError, match="only 1800 are eligible"):
        BadNets(rate=0.95).poison(sample.train)
    with pytest.raises(ConfigError, match="does not fit"):
        BadNets(size=40).poison(sample.train)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "float"),
    (torch.zeros(3, 32, 32), r"\(N, C, H, W\)"),
    (torch.full((1, 3, 32, 32), 2.0), r"\[0, 1\]"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    (torch.zeros(1, 3, 64, 64), "shape"),
    (np.zeros((1, 3, 32, 32), dtype=np.float32), "torch.Tensor"),
])
def test_trigger_rejects_bad_images(bad, match):
    with pytest.raises(InputError, match=match):
        MaskTrigger.square((3, 32, 32)).apply(bad)
