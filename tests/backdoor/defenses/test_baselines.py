"""Spectral Signatures, Activation Clustering, Fine-Pruning and NAD against independent facts: numpy SVD scores,
synthetic clusters, hand-computed attention maps, the channels actually masked, and end-to-end runs that read
no test data and give fine-pruning/NAD only truly clean samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.guards import TINY, guard_defenses
from torch import nn

import advml.experiments.backdoor as run_module
from advml.backdoor.defenses import DEFENSES, DefenseContext, build_defense
from advml.backdoor.defenses.activation_clustering import ACSettings, activation_clustering, kmeans
from advml.backdoor.defenses.base import oracle_clean_subset
from advml.backdoor.defenses.fine_pruning import FinePruning, clean_statistics, find_prune_site
from advml.backdoor.defenses.nad import NAD, at_loss, attention_map, stage_outputs
from advml.backdoor.defenses.spectral import spectral_removed, spectral_scores
from advml.data.base import TensorImageDataset
from advml.errors import ConfigError
from advml.experiments import load_settings, run_backdoor
from advml.models import build_model


def _images(n: int, seed: int = 0, classes: int = 3) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    return TensorImageDataset(x, torch.arange(n) % classes, [str(c) for c in range(classes)])


# --- spectral signatures -----------------------------------------------------------------------------------------
def test_spectral_score_equals_numpy_svd_per_class() -> None:
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(30, 5, generator=g), torch.arange(30) % 2
    got = spectral_scores(feats, labels)
    for c in (0, 1):
        r = feats[labels == c].double().numpy()
        centred = r - r.mean(0)
        v = np.linalg.svd(centred)[2][0]
        assert np.allclose(got[labels == c].numpy(), (centred @ v) ** 2)


def test_spectral_removes_round_1p5_eps_per_class_and_finds_a_planted_direction() -> None:
    g = torch.Generator().manual_seed(1)
    counts = {0: 40, 1: 27, 2: 13}
    labels = torch.cat([torch.full((n,), c) for c, n in counts.items()])
    feats = torch.randn(labels.numel(), 8, generator=g)
    planted = torch.tensor([0, 1, 2, 3, 4, 5])  # class 0: 6 samples shifted far along one axis
    feats[planted, 0] += 25.0
    scores = spectral_scores(feats, labels)
    removed = spectral_removed(scores, labels, 1.5 * 0.1)
    for c, n in counts.items():
        assert int(removed[labels == c].sum()) == round(0.15 * n)
    assert removed[planted].all()  # round(0.15 * 40) = 6: exactly the planted ones


# --- activation clustering ---------------------------------------------------------------------------------------
def _two_blobs(n_big: int, n_small: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    big = torch.randn(n_big, 16, generator=g)
    small = torch.randn(n_small, 16, generator=g) + 8.0
    return torch.cat([big, small])


def test_ac_flags_the_small_cluster_and_nothing_when_balanced() -> None:
    feats = torch.cat([_two_blobs(80, 20), _two_blobs(50, 50, seed=1)])
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    removed, scores, report = activation_clustering(feats, labels, ACSettings(), seed=0)
    truth = torch.zeros(200, dtype=torch.bool)
    truth[80:100] = True
    assert torch.equal(removed, truth)
    assert torch.allclose(scores[80:100].float(), torch.tensor(0.8)) and torch.allclose(scores[:80].float(),
                                                                                         torch.tensor(0.2))
    assert sorted(report[1]["cluster_sizes"]) == [0.5, 0.5] and report[1]["poisoned"] == []
    smaller, _, _ = activation_clustering(feats, labels, ACSettings(analysis="smaller"), seed=0)
    assert smaller[:100].equal(truth[:100]) and int(smaller[100:].sum()) == 50  # 'smaller' always removes one


def test_kmeans_is_seeded_and_separates_blobs() -> None:
    x = _two_blobs(30, 10).double()
    a1, c1 = kmeans(x, 2, generator=torch.Generator().manual_seed(3))
    a2, c2 = kmeans(x, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2) and torch.equal(c1, c2)
    assert a1[:30].unique().numel() == 1 and a1[30:].unique().numel() == 1 and a1[0] != a1[-1]


# --- fine-pruning ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["resnet18_narrow", "cnn_small"])
def test_fine_pruning_masks_exactly_the_fraction_of_least_active_channels(arch) -> None:
    torch.manual_seed(0)
    options = {"width": 4} if arch == "resnet18_narrow" else {}
    model = build_model(arch, 3, image_size=16, **options)
    clean = _images(24)
    x, _ = clean.tensors()
    site = find_prune_site(model, x)
    # independent: run the backbone up to the pruned map and average each channel
    model.eval()
    with torch.no_grad():
        fmap = nn.Sequential(*list(model.backbone)[:site.index + 1])(model.normalize(x))
    expected = fmap.mean((0, 2, 3))
    activation, _ = clean_statistics(model, site, clean)
    assert torch.allclose(activation, expected, atol=1e-5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = DefenseContext(new_model=lambda arch=None: None, backdoored=model, clean_data=clean, progress=False)
    result = FinePruning(prune_ratio=0.25, epochs=1, batch_size=8).run(clean, ctx)
    info = result.report["metrics"]["fine_pruning"]
    n = round(0.25 * site.channels)
    assert info["pruned"] == n and len(info["pruned_channels"]) == n
    assert set(info["pruned_channels"]) == set(torch.argsort(expected)[:n].tolist())
    w = site.linear.weight.detach().view(site.linear.out_features, site.channels, site.group)
    dead = (w == 0).all(2).all(0)  # channels whose every column is zero
    assert int(dead.sum()) == n and set(dead.nonzero().flatten().tolist()) == set(info["pruned_channels"])
    assert set(model.state_dict()) == set(before)  # permanent: plain weights, loadable into a fresh model
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it was fine-tuned
    # the pruned model equals the unpruned backbone with those channels zeroed (compared in float32: the
    # fine-tuning Trainer left the model in bf16 where the CPU has it)
    from advml.utils.precision import Precision, set_precision

    set_precision(model, Precision(False, False, "float32 comparison"))
    model.eval()
    with torch.no_grad():
        fmap = nn.Sequential(*list(model.backbone)[:site.index + 1])(model.normalize(x))
        fmap[:, info["pruned_channels"]] = 0
        z = nn.Sequential(*list(model.backbone)[site.index + 1:])(fmap)
        assert torch.allclose(model.head(z), model(x), atol=1e-5)


def test_fine_pruning_rule_stops_before_the_tolerated_drop() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18_narrow", 3, image_size=16, width=4)
    clean = _images(30)
    ctx = DefenseContext(new_model=lambda arch=None: None, backdoored=model, clean_data=clean, progress=False)
    result = FinePruning(epochs=1, acc_ratio=0.1, once_prune_ratio=0.125).run(clean, ctx)
    info = result.report["metrics"]["fine_pruning"]
    steps, base = info["steps"], info["steps"][0]["clean_subset_acc"]
    ok = [s["pruned"] for s in steps if base and (base - s["clean_subset_acc"]) / base < 0.1]
    # the chosen count is the last step of the unbroken run of tolerated steps
    run = 0
    for s in steps[1:]:
        if (base - s["clean_subset_acc"]) / base >= 0.1:
            break
        run = s["pruned"]
    assert info["pruned"] == run and run in ok + [0] and all(s["pruned"] % 4 == 0 for s in steps)


def test_clean_data_defenses_refuse_to_run_without_a_clean_subset() -> None:
    model = build_model("cnn_small", 3, image_size=16)
    ctx = DefenseContext(new_model=lambda arch=None: None, backdoored=model, progress=False)
    for cls in (FinePruning, NAD):
        with pytest.raises(ConfigError, match="clean subset"):
            cls().run(_images(12), ctx)


# --- NAD ---------------------------------------------------------------------------------------------------------
def test_attention_loss_equals_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)

    def hand(f: np.ndarray) -> np.ndarray:
        am = (np.abs(f) ** 2).sum(1)  # (N, H, W)
        return am / (np.sqrt((am ** 2).sum((1, 2), keepdims=True)) + 1e-6)

    a, b = hand(fs.double().numpy()), hand(ft.double().numpy())
    assert np.allclose(attention_map(fs).squeeze(1).numpy(), a, atol=1e-6)
    assert abs(float(at_loss(fs, ft)) - float(((a - b) ** 2).mean())) < 1e-6
    assert float(at_loss(fs, fs * 3)) < 1e-10  # a channel-uniform scale leaves the normalised map unchanged
    # p = 1 on a single-channel map with one hot position: the map is that one-hot
    one = torch.zeros(1, 1, 2, 2)
    one[0, 0, 1, 0] = -5
    assert torch.allclose(attention_map(one, p=1), (one.abs() > 0).float(), atol=1e-6)


def test_nad_taps_the_last_three_stages() -> None:
    model = build_model("resnet18_narrow", 3, image_size=32, width=4)
    layers = stage_outputs(model, torch.rand(1, 3, 32, 32), 3)
    assert [type(model.backbone[i]).__name__ for i in layers] == ["BasicBlock"] * 3
    assert layers == [6, 8, 10]  # conv, bn, relu, then blocks 3..10: the second block of stages 2, 3, 4


# --- the clean subset and end-to-end runs ------------------------------------------------------------------------
def test_oracle_clean_subset_has_no_poisoned_sample() -> None:
    from advml.backdoor.attacks import build_attack

    base = _images(200)
    poisoned = build_attack({"name": "badnets", "rate": 0.3}).poison(base, seed=0)
    clean, idx = oracle_clean_subset(poisoned, 0.05, seed=0)
    assert len(clean) == 10 and not poisoned.poison_flags[idx].any()
    x, y = clean.tensors()
    bx, by = base.subset(idx).tensors()
    assert torch.equal(x, bx) and torch.equal(y, poisoned.original_labels[idx])
    assert not hasattr(clean, "poison_flags")


def test_registry_lists_the_four_baselines() -> None:
    for name in ("spectral", "ac", "fine-pruning", "nad"):
        assert build_defense(name).name == name and DEFENSES.get(name).needs_backdoored_model


DEFENSES_TINY = [
    {"name": "spectral", "train": {"epochs": 1, "progress": False, "augment": "none"}},
    {"name": "ac", "train": {"epochs": 1, "progress": False, "augment": "none"}},
    {"name": "fine-pruning", "epochs": 1, "clean_fraction": 0.1},
    {"name": "nad", "epochs": 1, "teacher_epochs": 1, "clean_fraction": 0.1},
]


@pytest.mark.parametrize("defense", DEFENSES_TINY, ids=lambda d: d["name"])
def test_baseline_run_end_to_end_reads_no_test_data_and_only_clean_oracle(tmp_path, monkeypatch, defense) -> None:
    state = {"in_defense": False, "clean": None, "poisoned": None}
    real_setup = run_module.setup

    def setup(*args, **kwargs):
        out = real_setup(*args, **kwargs)
        state["poisoned"] = out[2]
        return out

    guard_defenses(monkeypatch, state)
    monkeypatch.setattr(run_module, "setup", setup)
    settings = load_settings(None, {**TINY, "defense": defense})
    m = run_backdoor(settings, tmp_path / "run").metrics
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= saved["clean_acc"] <= 1 and 0 <= saved["asr"] <= 1 and saved["clean_acc"] == m["clean_acc"]
    assert {"clean_acc_before", "asr_before"} <= set(saved)
    if defense["name"] in ("spectral", "ac"):
        assert {"detect_precision", "detect_recall", "clean_split_poison_rate"} <= set(saved)
        assert saved["split_sizes"]["uncertain"] == 0
        assert saved["split_sizes"]["clean"] + saved["split_sizes"]["poisoned"] == 500
        if defense["name"] == "spectral":  # 500 images, labels: per class round(0.15 n_c)
            labels = state["poisoned"].labels
            assert saved["split_sizes"]["poisoned"] == sum(round(0.15 * int((labels == c).sum()))
                                                           for c in labels.unique())
        assert (tmp_path / "run" / "fct_hist.png").stat().st_size > 1000
        assert state["clean"] is None and "clean_subset" not in saved
    else:
        assert "detect_precision" not in saved
        assert saved["clean_subset"] == {"size": 50, "fraction": 0.1,
                                         "source": "truly clean training samples (oracle)"}
        # every clean-subset image is a non-poisoned training image with its original label
        poisoned = state["poisoned"]
        bx, _ = poisoned.base.tensors()
        cx, cy = state["clean"].tensors()
        match = (cx.flatten(1)[:, None, :] == bx.flatten(1)[None, :, :]).all(2)  # (50, 500)
        assert match.any(1).all()
        idx = match.float().argmax(1)
        assert not poisoned.poison_flags[idx].any() and torch.equal(cy, poisoned.original_labels[idx])


def test_defenses_listed_by_the_cli() -> None:
    from typer.testing import CliRunner

    from advml.cli import app

    r = CliRunner().invoke(app, ["defenses"])
    assert r.exit_code == 0 and all(n in r.output for n in ("spectral", "ac ", "fine-pruning", "nad"))
