"""D-ST / D-BR parts tested against independent facts: hand-computed FCT, split sizes, loss signs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from advml.backdoor.defenses import (
    DEFENSES,
    Split,
    build_defense,
    contrastive_loss,
    fct_scores,
    split_by_score,
)
from advml.backdoor.defenses.base import untrusted_view
from advml.backdoor.defenses.contrastive import LinearProbe
from advml.backdoor.defenses.dbr import ascent_loss
from advml.backdoor.defenses.dst import mce_loss
from advml.backdoor.defenses.fct import build_transform
from advml.backdoor.defenses.holdout import HoldoutSettings, hold_out, holdout, selection_score
from advml.backdoor.defenses.sd import SDSettings, distinguish, intra_class_loss
from advml.data.base import TensorImageDataset
from advml.errors import ConfigError, InputError, UnknownNameError
from advml.train import Batch, TrainConfig, Trainer, cross_entropy


class Flat(nn.Module):
    """features(x) = the pixels themselves: FCT then has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) + self.w


def _data(n: int = 24, seed: int = 0, size: int = 8) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return TensorImageDataset(x, torch.arange(n) % 3, ["a", "b", "c"])


def test_fct_equals_hand_computation_for_a_flip() -> None:
    data = _data()
    x = data.get_batch(torch.arange(len(data)))[0]
    hand = (x.flatten(1) - x.flip(-1).flatten(1)).pow(2).mean(1)
    got = fct_scores(Flat(), data, transforms=["flip"], batch_size=7)
    assert torch.allclose(got, hand, atol=1e-6)


def test_fct_rotation_of_a_constant_image_changes_only_the_corners() -> None:
    # a constant image rotated by any angle keeps its value at the centre: the score is at most the value^2
    x = torch.full((4, 1, 9, 9), 0.5)
    data = TensorImageDataset((x * 255).round().to(torch.uint8), torch.zeros(4, dtype=torch.long), ["a"])
    s = fct_scores(Flat(), data, transforms=["rotate"], seed=1)
    assert (s >= 0).all() and (s < 0.5 ** 2).all() and (s > 0).any()


def test_fct_is_seeded_and_draws_average() -> None:
    data = _data()
    a = fct_scores(Flat(), data, seed=3)
    assert torch.equal(a, fct_scores(Flat(), data, seed=3))
    assert not torch.equal(a, fct_scores(Flat(), data, seed=4))
    d1 = fct_scores(Flat(), data, seed=3, draws=1)
    assert torch.equal(d1, a)
    assert not torch.equal(fct_scores(Flat(), data, seed=3, draws=3), a)


def test_fct_draws_average_hand_draws_and_reuse_f_x() -> None:
    data = _data(n=10)
    x = data.get_batch(torch.arange(len(data)))[0]
    tau = build_transform(["translate"], (8, 8))
    torch.manual_seed(5)
    hand = sum((x.flatten(1) - tau(x).flatten(1)).pow(2).mean(1) for _ in range(3)) / 3
    calls = []

    class Counting(Flat):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return super().features(x)

    got = fct_scores(Counting(), data, transforms=["translate"], draws=3, seed=5)
    assert torch.allclose(got, hand, atol=1e-6)
    assert calls == [10] * 4  # f(x) once, f(tau(x)) per draw: 1 + draws passes, not 2 x draws


def test_fct_leaves_the_model_in_its_mode_and_needs_features() -> None:
    m = Flat().train()
    fct_scores(m, _data())
    assert m.training
    with pytest.raises(InputError, match="features"):
        fct_scores(nn.Linear(2, 2), _data())
    with pytest.raises(UnknownNameError, match="rotate"):
        fct_scores(Flat(), _data(), transforms=["rotat"])


@pytest.mark.parametrize("n", [1, 7, 100, 1001])
def test_split_sizes_and_order(n: int) -> None:
    scores = torch.randn(n, generator=torch.Generator().manual_seed(n))
    s = split_by_score(scores, 0.2, 0.05)
    assert s.clean.numel() == math.floor(0.2 * n) and s.poisoned.numel() == math.floor(0.05 * n)
    every = torch.cat([s.clean, s.poisoned, s.uncertain]).sort().values
    assert torch.equal(every, torch.arange(n))
    if s.clean.numel() and s.uncertain.numel():
        assert scores[s.clean].max() <= scores[s.uncertain].min()
    if s.poisoned.numel() and s.uncertain.numel():
        assert scores[s.poisoned].min() >= scores[s.uncertain].max()


def test_tied_scores_are_split_by_a_seeded_draw_not_by_position() -> None:
    """800 of 1,000 samples score exactly 0 (collapsed features) in a file sorted by class: D_c must not be the
    first classes of the file."""
    labels = torch.arange(1000) // 100  # classes 0..9 in order, as a class-sorted file
    scores = torch.zeros(1000)
    scores[800:] = torch.linspace(1, 2, 200)
    s = split_by_score(scores, 0.2, 0.05, seed=3)
    assert torch.bincount(labels[s.clean], minlength=10)[:8].min() > 0  # every class of the tied part, not 0-1
    assert torch.equal(s.clean, split_by_score(scores, 0.2, 0.05, seed=3).clean)  # reproducible from the seed
    assert not torch.equal(s.clean, split_by_score(scores, 0.2, 0.05, seed=4).clean)
    assert torch.equal(s.poisoned, torch.arange(950, 1000))  # untied scores: the plain order


def test_split_metrics_against_flags() -> None:
    scores = torch.arange(20.0)  # the top scorers are 19, 18, ...
    truth = torch.zeros(20, dtype=torch.bool)
    truth[[19, 0, 5]] = True
    m = split_by_score(scores, 0.25, 0.1).metrics(truth)  # D_c = 0..4, D_p = 18, 19
    assert m == {"detect_precision": 0.5, "detect_recall": pytest.approx(1 / 3), "clean_split_poison_rate": 0.2,
                 "clean_split_tie_share": 0.05}  # one sample (score 4) at D_c's boundary
    tied = torch.zeros(20)
    tied[15:] = torch.arange(1.0, 6.0)
    assert split_by_score(tied, 0.25, 0.1).tie_share() == 0.75  # D_c drawn from the 15 zero scores
    with pytest.raises(ConfigError):
        split_by_score(scores, 0.8, 0.3)
    with pytest.raises(InputError):
        split_by_score(torch.tensor([1.0, float("nan")]))


def test_intra_class_loss_hand_values() -> None:
    y = torch.tensor([0, 0, 1, 1])
    orthogonal = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    assert intra_class_loss(orthogonal, y).item() == pytest.approx(0.0)
    same = torch.tensor([[1.0, 0], [2, 0], [3, 0], [1, 0]])
    assert intra_class_loss(same, y).item() == pytest.approx(0.5)  # 2x2 matrix, off-diagonals 1, mean 2/4
    opposite = torch.tensor([[1.0, 0], [1, 0], [-1, 0], [-1, 0]])
    assert intra_class_loss(opposite, y).item() == pytest.approx(-0.5)


def _reference_supcon(z1, z2, labels, supervised, t=0.1, bt=0.07):
    """A plain double loop over anchors (HobbitLong's formula), as the independent reference."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    lab = labels.repeat(2)
    sup = supervised.repeat(2)
    total = 0.0
    for i in range(2 * n):
        others = [j for j in range(2 * n) if j != i]
        denom = torch.logsumexp(torch.stack([z[i] @ z[j] / t for j in others]), 0)
        pos = [j for j in others if (sup[i] and lab[j] == lab[i]) or j == (i + n) % (2 * n)]
        total += -sum((z[i] @ z[j] / t - denom) for j in pos) / len(pos)
    return (t / bt) * total / (2 * n)


def test_contrastive_loss_matches_a_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    labels = torch.tensor([0, 1, 0, 1, 2, 0])
    sup = torch.tensor([True, False, True, True, False, False])
    for s in (sup, torch.ones(6, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)):
        ref = _reference_supcon(z1, z2, labels, s)
        assert contrastive_loss(z1, z2, labels, s).item() == pytest.approx(float(ref), rel=1e-5)
    # SimCLR = supervision off everywhere = labels unused
    assert contrastive_loss(z1, z2).item() == pytest.approx(
        contrastive_loss(z1, z2, labels, torch.zeros(6, dtype=torch.bool)).item())


def test_mce_loss_sign() -> None:
    model = nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    is_p = torch.tensor([False, False, False, True, True, True])
    got = mce_loss(is_p, 0.001)(model, Batch(x, y, torch.arange(6)))
    ce = F.cross_entropy(model(x), y, reduction="none")
    assert got.item() == pytest.approx((ce[:3].mean() - 0.001 * ce[3:].mean()).item())
    # a gradient step on the MCE loss with a large lambda raises the CE of D_p
    bigger = mce_loss(is_p, 10.0)(model, Batch(x, y, torch.arange(6)))
    bigger.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    assert F.cross_entropy(model(x[3:]), y[3:]) > ce[3:].mean()


def test_an_ascent_pass_raises_ce_on_the_poisoned_set() -> None:
    torch.manual_seed(0)
    data = _data(64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 3))
    x, y = data.get_batch(torch.arange(64))
    before = F.cross_entropy(model(x), y).item()
    trainer = Trainer(model, TrainConfig(epochs=1, lr=0.01, batch_size=16, augment="none", progress=False))
    trainer.train_epoch(data, ascent_loss)
    assert F.cross_entropy(model(x), y).item() > before


def test_trainer_phases_and_selection_restore_the_best_epoch(tmp_path) -> None:
    torch.manual_seed(0)
    data = _data(48)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 3))
    scores = iter([0.1, 0.9, 0.3])
    seen = {}

    def select(record):
        s = next(scores)
        seen[record["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}
        return s

    t = Trainer(model, TrainConfig(epochs=3, lr=0.1, batch_size=16, augment="none", progress=False),
                checkpoint_dir=tmp_path)
    hist = t.fit([(data.subset(torch.arange(16)), ascent_loss), (data, cross_entropy)], select=select)
    assert len(hist[0]["loss"]) == 2 and [h["select"] for h in hist] == [0.1, 0.9, 0.3]
    assert all(torch.equal(v, seen[2][k]) for k, v in model.state_dict().items())
    assert (tmp_path / "best.safetensors").is_file()


def test_linear_probe_freezes_encoder_and_batchnorm() -> None:
    from advml.models import build_model

    clf = build_model("resnet18_narrow", 3, width=4)
    probe = LinearProbe(clf).train()
    stats = clf.backbone.state_dict()
    before = {k: v.clone() for k, v in stats.items()}
    loss = F.cross_entropy(probe(torch.rand(8, 3, 32, 32)), torch.zeros(8, dtype=torch.long))
    loss.backward()
    assert all(torch.equal(v, before[k]) for k, v in clf.backbone.state_dict().items())
    assert all(p.grad is None for p in clf.backbone.parameters())
    assert clf.head.weight.grad is not None


def test_holdout_is_a_partition() -> None:
    idx = torch.arange(10, 40)
    a, b = holdout(idx, 0.1, 0)
    assert b.numel() == 3 and torch.equal(torch.cat([a, b]).sort().values, idx)
    with pytest.raises(ConfigError):
        holdout(idx, 1.0, 0)


def test_selection_score_point_and_pessimistic_by_hand() -> None:
    z2 = 1.96**2  # Wilson bounds in closed form: lower of n of n is n / (n + z^2), upper of 0 of n is z^2 / (n + z^2)
    assert selection_score(1.0, 200, 0.0, 50) == pytest.approx(200 / (200 + z2) - z2 / (50 + z2))
    assert selection_score(0.955, 200, 0.06, 50, pessimistic=False) == pytest.approx(0.895)
    # measured D-BR epochs (Trojan, cpu preset): 191/200 held-out clean right with 3/50 poisons still at the target,
    # vs 177/200 with 0/50. The point rule keeps the first (test ASR 0.076), the pessimistic rule the second (0.012)
    early, late = (0.955, 200, 0.06, 50), (0.885, 200, 0.0, 50)
    assert selection_score(*early, pessimistic=False) > selection_score(*late, pessimistic=False)
    assert selection_score(*late) > selection_score(*early)


def test_hold_out_sizes_and_selection_setting() -> None:
    split = Split(clean=torch.arange(0, 40), poisoned=torch.arange(90, 100), uncertain=torch.arange(40, 90),
                  scores=torch.zeros(100))
    data = _data(100)
    held = hold_out(data, split, HoldoutSettings(holdout_fraction=0.2), seed=0)
    assert (held.clean.numel(), held.poisoned.numel()) == (32, 8)
    assert {k: len(v) for k, v in held.evals.items()} == {"holdout_clean": 8, "holdout_poison": 2}
    assert torch.equal(held.clean, holdout(split.clean, 0.2, 1)[0])  # D_c held out with seed + 1, D_p with seed
    assert torch.equal(held.poisoned, holdout(split.poisoned, 0.2, 0)[0])
    record = {"holdout_clean": 1.0, "holdout_poison": 0.5}
    assert held.select(record) == pytest.approx(selection_score(1.0, 8, 0.5, 2))
    point = hold_out(data, split, HoldoutSettings(holdout_fraction=0.2, selection="point"), seed=0)
    assert point.select(record) == 0.5
    none = hold_out(data, split, HoldoutSettings(holdout_fraction=0.0), seed=0)
    assert none.evals == {} and none.select is None and none.clean.numel() == 40
    with pytest.raises(ConfigError):
        HoldoutSettings(selection="best-test")


def test_untrusted_view_hides_poison_flags(sample) -> None:
    from advml.backdoor import BadNets

    p = BadNets().poison(sample.train, seed=0)
    view = untrusted_view(p)
    assert not hasattr(view, "poison_flags")
    assert torch.equal(view.labels, p.labels)


def test_defense_registry_and_settings_errors() -> None:
    assert {"none", "d-br", "d-st", "baseline1", "baseline2"} <= set(DEFENSES.names())
    with pytest.raises(UnknownNameError, match="d-br"):
        build_defense("d_br")
    with pytest.raises(ConfigError, match="sd.clean_ratio"):
        build_defense({"name": "d-br", "sd": {"clean_ratio": 1.5}})
    with pytest.raises(ConfigError, match="poison_ratio"):
        SDSettings(clean_ratio=0.9, poison_ratio=0.2)
    assert isinstance(Split(torch.tensor([0]), torch.tensor([1]), torch.tensor([], dtype=torch.long),
                            torch.tensor([0.0, 1.0])).flags(), torch.Tensor)


class _DeadFeatures(nn.Module):
    """Post-ReLU features that are 0 for the first 8 images (a collapsed SD model), alive for the other 2."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def features(self, x: Tensor) -> Tensor:
        alive = (x.flatten(1).mean(1, keepdim=True) > 0.5).to(x.dtype)
        return F.relu(x.flatten(1)[:, :4] * self.w) * alive


def test_sd_split_warns_when_dc_is_drawn_from_ties(caplog: pytest.LogCaptureFixture) -> None:
    """Collapsed features tie at FCT 0; D_c is then a random draw among them, which the run must say."""
    x = torch.cat([torch.full((8, 3, 8, 8), 0.2), torch.rand(2, 3, 8, 8) * 0.2 + 0.7])
    data = TensorImageDataset((x * 255).round().to(torch.uint8), torch.zeros(10, dtype=torch.long), ["a"])
    with caplog.at_level("WARNING", logger="advml"):
        split = distinguish(_DeadFeatures(), data, SDSettings(transforms=["translate"]), train=False)
    assert split.tie_share() == pytest.approx(0.8)
    assert "80% of the samples tie" in caplog.text and "random draw" in caplog.text
