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
    corners = MaskTrigger.union([MaskTrigger.checkerboard((3, 32, 32), 3, c)
                                 for c in ("bottom_right", "bottom_left", "top_right", "top_left")])
    outside = corners.mask[0] == 0
    diff = (dirty[p.poison_indices] - clean[p.poison_indices])[:, :, outside]
    assert diff.abs().max() <= 8 / 255 + 1e-6 and diff.abs().max() > 4 / 255  # PGD used its budget
    assert torch.equal(dirty[p.poison_indices][:, :, ~outside],
                       corners.apply(clean[:1])[:, :, ~outside].expand(40, -1, -1))


def test_four_corner_test_trigger(sample, model):
    bt = CleanLabel(model=model).backdoor_test_set(sample.test)
    x, y = bt.get_batch(torch.arange(4))
    assert y.eq(0).all() and len(bt) == 450
    for r, c in ((0, 0), (0, 29), (29, 0), (29, 29)):
        patch = x[:, :, r:r + 3, c:c + 3]
        assert torch.all(patch[:, :, 0, 0] == 1) and torch.all(patch[:, :, 0, 1] == 0)


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
