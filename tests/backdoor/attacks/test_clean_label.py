import numpy as np
import pytest
import torch

from advml.backdoor import build_attack
from advml.backdoor.attacks.clean_label import CleanLabel
from advml.backdoor.triggers import MaskTrigger
from advml.errors import ConfigError, InputError
from advml.evasion import IterativeAttack
from advml.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("cnn_small", 10)


def test_clean_label_changes_only_target_images_within_budget(sample, model):
    attack = CleanLabel(model=model, target=1, rate=0.2)
    p = attack.poison(sample.train, seed=0)
    assert len(p.poison_indices) == 40 and (p.original_labels[p.poison_indices] == 1).all()
    assert torch.equal(p.labels, sample.train.labels)
    dirty, clean = p.tensors()[0], sample.train.tensors()[0]
    changed = (dirty != clean).flatten(1).any(1)
    assert torch.equal(changed, p.poison_flags)
    corners = MaskTrigger.ebd_four_corners((3, 32, 32))
    outside = corners.mask[0] == 0
    diff = (dirty[p.poison_indices] - clean[p.poison_indices])[:, :, outside]
    assert diff.abs().max() <= 8 / 255 + 1e-6 and diff.abs().max() > 4 / 255  # PGD used its budget
    assert torch.equal(dirty[p.poison_indices][:, :, ~outside],
                       corners.apply(clean[:1])[:, :, ~outside].expand(40, -1, -1))


def test_four_corner_test_trigger(sample, model):
    bt = CleanLabel(model=model).backdoor_test_set(sample.test)
    x, y = bt.get_batch(torch.arange(4))
    assert y.eq(0).all() and len(bt) == 450
    assert torch.equal(x, MaskTrigger.ebd_four_corners((3, 32, 32)).apply(x))
    flush = CleanLabel(model=model, corners="flush").backdoor_test_set(sample.test).get_batch(torch.arange(4))[0]
    for r, c in ((0, 0), (0, 29), (29, 0), (29, 29)):
        patch = flush[:, :, r:r + 3, c:c + 3]
        assert torch.all(patch[:, :, 0, 0] == 1) and torch.all(patch[:, :, 0, 1] == 0)


def ebd_four_corner_trigger(img: np.ndarray) -> np.ndarray:
    """EBD utils/dataloader_bd.py `_fourCornerTrigger` l. 458-505 (its stamping, after the PGD step), HWC uint8."""
    width, height = img.shape[0], img.shape[1]
    for (r, c), v in {(width - 1, height - 1): 255, (width - 1, height - 2): 0, (width - 1, height - 3): 255,
                      (width - 2, height - 1): 0, (width - 2, height - 2): 255, (width - 2, height - 3): 0,
                      (width - 3, height - 1): 255, (width - 3, height - 2): 0, (width - 3, height - 3): 0,
                      (1, 1): 255, (1, 2): 0, (1, 3): 255, (2, 1): 0, (2, 2): 255, (2, 3): 0,
                      (3, 1): 255, (3, 2): 0, (3, 3): 0,
                      (width - 1, 1): 255, (width - 1, 2): 0, (width - 1, 3): 255,
                      (width - 2, 1): 0, (width - 2, 2): 255, (width - 2, 3): 0,
                      (width - 3, 1): 255, (width - 3, 2): 0, (width - 3, 3): 0,
                      (1, height - 1): 255, (2, height - 1): 0, (3, height - 1): 255,
                      (1, height - 2): 0, (2, height - 2): 255, (3, height - 2): 0,
                      (1, height - 3): 255, (2, height - 3): 0, (3, height - 3): 0}.items():
        img[r][c] = v
    return img


def test_four_corner_trigger_equals_ebd_s(sample):
    x, _ = sample.test.get_batch(torch.arange(6))
    ours = MaskTrigger.ebd_four_corners((3, 32, 32)).apply(x)
    hwc = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().copy()
    official = torch.from_numpy(np.stack([ebd_four_corner_trigger(i) for i in hwc])).permute(0, 3, 1, 2)
    assert torch.equal((ours * 255).round().to(torch.uint8), official)
    flush = MaskTrigger.union([MaskTrigger.checkerboard((3, 32, 32), 3, c)
                               for c in ("bottom_right", "bottom_left", "top_right", "top_left")]).apply(x)
    assert int((flush != ours).any(1).sum(dim=(1, 2)).min()) >= 4  # the former layout differed in many pixels


def test_pgd_budget_and_objective(sample, model):
    x, y = sample.test.get_batch(torch.arange(32))
    adv = IterativeAttack(model, eps=4 / 255, step=1 / 255, iters=5, random_start=True,
                          generator=torch.Generator().manual_seed(0))(x, y)
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    ce = torch.nn.functional.cross_entropy
    model.eval()
    with torch.no_grad():
        assert ce(model(adv), y) > ce(model(x), y)  # untargeted: the loss of the true label went up
        t = torch.full_like(y, 3)
        tadv = IterativeAttack(model, eps=4 / 255, step=1 / 255, iters=5)(x, y, t)
        assert ce(model(tadv), t) < ce(model(x), t)  # targeted: the target's loss went down


def test_bad_inputs(model, sample):
    with pytest.raises(ConfigError, match="eps"):
        IterativeAttack(model, eps=0)
    with pytest.raises(InputError, match="one integer label per image"):
        IterativeAttack(model)(torch.rand(2, 3, 32, 32), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="surrogate.epochs"):
        build_attack("clean_label", surrogate={"epochs": 0})
