"""DBD and ABL: their losses and MixMatch pieces against hand computations, their splits, and both defenses end to
end through run_backdoor at toy size (metric keys, no test-label reads)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.guards import TINY, guard_defenses
from torch import nn
from torch.nn import functional as F

from advml.backdoor.defenses import DEFENSES, build_defense
from advml.backdoor.defenses.abl import ABL, isolate, lga_loss
from advml.backdoor.defenses.dbd import DBD, labelled_split, sce_loss
from advml.backdoor.defenses.mixmatch import (
    MixMatchSettings,
    linear_rampup,
    mixmatch_loss_fn,
    mixup,
    sharpen,
    supervised_loss,
    unsupervised_loss,
)
from advml.data.base import TensorImageDataset
from advml.errors import ConfigError
from advml.experiments import load_settings, run_backdoor
from advml.train import Batch


def test_sce_matches_a_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    e = [math.exp(2), 1.0, math.exp(-1)]
    p0 = e[0] / sum(e)
    log_clamp = math.log(1e-4)  # log of the clamped zeros of the one-hot vector; log(1) = 0
    first = 0.1 * -math.log(p0) + 1.0 * -(1 - p0) * log_clamp
    second = 0.1 * math.log(3) + 1.0 * -(2 / 3) * log_clamp
    per_sample = sce_loss(logits, y, 0.1, 1.0, reduction="none")
    assert per_sample.tolist() == pytest.approx([first, second], rel=1e-5)
    assert float(sce_loss(logits, y)) == pytest.approx((first + second) / 2, rel=1e-5)
    # beta = 0 leaves alpha CE
    assert float(sce_loss(logits, y, 1.0, 0.0)) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)


def test_sharpen_with_t_half_squares_and_renormalises() -> None:
    p = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1]])
    out = sharpen(p, 0.5)
    assert out[0].tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52])
    assert out[1].tolist() == pytest.approx([0.5, 0.5])
    assert out[2].tolist() == pytest.approx([0.81 / 0.82, 0.01 / 0.82])


@pytest.mark.parametrize("lam", [0.3, 0.7])
def test_mixup_keeps_the_larger_weight_on_the_first_input(lam: float) -> None:
    x = torch.tensor([[1.0], [3.0], [10.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    mx, mt, used = mixup(x, t, lam, torch.tensor([1, 0, 2]))
    assert used == pytest.approx(0.7)  # lambda' = max(lambda, 1 - lambda) either way
    assert mx.flatten().tolist() == pytest.approx([0.7 * 1 + 0.3 * 3, 0.7 * 3 + 0.3 * 1, 10.0])
    torch.testing.assert_close(mt, torch.tensor([[0.7, 0.3], [0.3, 0.7], [0.5, 0.5]]))


def test_mixmatch_loss_terms_and_ramp() -> None:
    logits = torch.zeros(2, 2)  # softmax 0.5 / 0.5
    targets = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    # L2 term: mean over samples and classes of (0.5 - t)^2
    assert float(unsupervised_loss(logits, targets)) == pytest.approx((0.25 + 0.25 + 0.0625 + 0.0625) / 4)
    # soft CE: -mean sum t log 0.5 = log 2
    assert float(supervised_loss(logits, targets)) == pytest.approx(math.log(2))
    assert [linear_rampup(p, 10) for p in (-1, 0, 2.5, 10, 30)] == [0.0, 0.0, 0.25, 1.0, 1.0]


def test_mixmatch_step_weights_the_unlabelled_term_by_the_ramp() -> None:
    torch.manual_seed(0)
    data = TensorImageDataset(torch.rand(8, 3, 8, 8), torch.arange(8) % 2, ["a", "b"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 2))
    batch = Batch(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), torch.arange(4))

    def loss_at(progress: float, lambda_u: float) -> float:
        torch.manual_seed(1)  # the same augmentations, Beta draw and permutation each time
        fn = mixmatch_loss_fn(data, 2, MixMatchSettings(epochs=4, lambda_u=lambda_u), lambda: progress)
        return float(fn(model, batch).detach())

    assert loss_at(0.0, 15.0) == pytest.approx(loss_at(2.0, 0.0))  # ramp 0: no unlabelled term
    base, half, full = loss_at(2.0, 0.0), loss_at(2.0, 15.0), loss_at(4.0, 15.0)
    assert half > base and full - base == pytest.approx(2 * (half - base), rel=1e-5)  # ramp 0.5 vs 1


@pytest.mark.parametrize("n", [10, 11, 500])
def test_dbd_split_labels_the_lowest_loss_half(n: int) -> None:
    scores = torch.rand(n, generator=torch.Generator().manual_seed(n))
    split = labelled_split(scores, 0.5)
    assert split.clean.numel() == n // 2 and split.clean.numel() + split.poisoned.numel() == n
    assert split.uncertain.numel() == 0
    assert scores[split.clean].max() <= scores[split.poisoned].min()


def test_lga_ascends_below_gamma_and_descends_above() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    batch = Batch(torch.randn(6, 4), torch.randint(0, 3, (6,)), torch.arange(6))
    ce = F.cross_entropy(model(batch.x), batch.y)
    (g_ce,) = torch.autograd.grad(ce, model.weight)
    for gamma, sign in ((float(ce.detach()) + 1.0, -1.0), (float(ce.detach()) - 1.0, 1.0)):
        loss = lga_loss(gamma)(model, batch)
        assert float(loss.detach()) == pytest.approx(sign * float(ce.detach()), rel=1e-6)
        (g,) = torch.autograd.grad(loss, model.weight)
        torch.testing.assert_close(g, sign * g_ce)


@pytest.mark.parametrize(("n", "ratio", "size"), [(500, 0.01, 5), (1000, 0.01, 10), (50, 0.01, 1)])
def test_abl_isolates_the_requested_lowest_loss_fraction(n: int, ratio: float, size: int) -> None:
    scores = torch.rand(n, generator=torch.Generator().manual_seed(1))
    split = isolate(scores, ratio)
    assert split.poisoned.numel() == size and split.clean.numel() == n - size
    assert scores[split.poisoned].max() <= scores[split.clean].min()


def test_registry_settings_are_floats_and_validated() -> None:
    assert {"dbd", "abl"} <= set(DEFENSES.names())
    d = build_defense({"name": "dbd", "epsilon": 0.4, "mixmatch": {"temperature": 0.5}})
    assert isinstance(d, DBD) and d.settings.epsilon == 0.4 and d.settings.mixmatch.temperature == 0.5
    assert d.settings.encoder.temperature == 0.5 and d.settings.encoder.blur_p == 0.5  # DBD's SimCLR
    assert d.settings.encoder.base_temperature == 0.5  # NT-Xent, no SupContrast temperature / 0.07 factor
    assert isinstance(build_defense("abl"), ABL)
    with pytest.raises(ConfigError):
        build_defense({"name": "dbd", "epsilon": 1.5})
    with pytest.raises(ConfigError):
        build_defense({"name": "abl", "isolation_ratio": 0})






@pytest.mark.parametrize(("defense", "sizes"), [
    ({"name": "dbd", "encoder": {"epochs": 1, "batch_size": 128}, "warmup": {"epochs": 1},
      "mixmatch": {"epochs": 2, "iterations": 3, "batch_size": 16}}, {"clean": 250, "poisoned": 250, "uncertain": 0}),
    ({"name": "abl", "isolation_epochs": 1, "finetune_epochs": 1, "unlearning_epochs": 1},
     {"clean": 495, "poisoned": 5, "uncertain": 0}),
])
def test_defense_runs_end_to_end_without_test_labels(tmp_path, monkeypatch, defense, sizes) -> None:
    state = {"in_defense": False}
    guard_defenses(monkeypatch, state)
    m = run_backdoor(load_settings(None, {**TINY, "defense": defense}), tmp_path / "run").metrics
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("clean_acc", "asr", "detect_precision", "detect_recall", "clean_split_poison_rate"):
        assert 0 <= saved[key] <= 1, key
    assert saved["clean_acc"] == m["clean_acc"]
    assert saved["split_sizes"] == sizes
    compute = saved["defense_compute"]
    assert compute["seconds"] > 0 and compute["epoch_images"] == sum(
        s["epochs"] * s["images"] for s in compute["stages"].values())
    if defense["name"] == "dbd":
        assert compute["stages"]["simclr"]["forward_images"] == 2 * 500
        assert compute["stages"]["mixmatch"]["epoch_images"] == 2 * 3 * 16 * 2  # epochs x (labelled + unlabelled)
        assert len(saved["defense_history"]) == 2
    else:
        assert set(saved["defense_history"]) == {"isolation", "finetune", "unlearning"}
    assert (tmp_path / "run" / "split.safetensors").is_file()


def test_dst_reports_its_compute_per_stage(tmp_path) -> None:
    defense = {"name": "d-st", "sd": {"warmup_epochs": 1, "finetune_epochs": 1, "draws": 2},
               "encoder": {"epochs": 1, "batch_size": 128}, "classifier": {"epochs": 1}}
    run_backdoor(load_settings(None, {**TINY, "defense": defense}), tmp_path / "run")
    compute = json.loads((tmp_path / "run" / "metrics.json").read_text())["defense_compute"]
    stages = compute["stages"]
    assert set(stages) == {"sd", "encoder", "classifier"}
    # forward images of the SD stage: its epochs, then FCT's f(x) once and one pass per transform draw
    assert stages["sd"]["epoch_images"] == 2 * 500 and stages["sd"]["forward_images"] == (2 + 1 + 2) * 500
    assert stages["encoder"]["forward_images"] == 2 * 1 * 500
    assert stages["classifier"]["images"] == 113  # 90 % of D_c (100) and of D_p (25), the rest held out
    assert compute["epoch_images"] == 1000 + 500 + 113 and compute["seconds"] > 0


def test_a_partial_preset_block_keeps_dbds_own_defaults():
    """defense_cpu gives DBD's encoder / warmup in part: the rest must be DBD's defaults, not the generic classes'."""
    from advml.backdoor.defenses.dbd import DBDSettings
    from advml.experiments import load_settings

    d = load_settings(None, {"defense": {"name": "dbd"}}, preset="defense_cpu").defense
    assert d["encoder"]["epochs"] == 10 and d["encoder"]["projection_bn"] and d["encoder"]["anchor_views"] == "first"
    assert d["warmup"]["augment"] == "crop_flip" and d["warmup"]["train_bn"] and d["warmup"]["epochs"] == 5
    s = DBDSettings(warmup={"epochs": 3})
    assert (s.warmup.epochs, s.warmup.lr, s.warmup.optimizer) == (3, 0.002, "adam")
