"""Defense runs end to end on the bundled sample (tiny settings): files, metric keys, no test-label reads."""

from __future__ import annotations

import json

import pytest
from helpers.guards import TINY, guard_defenses
from typer.testing import CliRunner

from advml.cli import app
from advml.errors import ConfigError
from advml.experiments import load_settings, run_backdoor

TINY_SD = {"warmup_epochs": 1, "finetune_epochs": 1}




@pytest.mark.parametrize("defense", [
    {"name": "d-br", "sd": TINY_SD, "epochs": 2},
    {"name": "d-st", "sd": TINY_SD, "encoder": {"epochs": 1, "batch_size": 128}, "classifier": {"epochs": 1}},
    {"name": "baseline1", "encoder": {"epochs": 1, "batch_size": 128}, "classifier": {"epochs": 1}},
])
def test_defense_run_reads_no_test_labels_and_writes_its_metrics(tmp_path, monkeypatch, defense) -> None:
    state = {"in_defense": False}
    guard_defenses(monkeypatch, state)
    settings = load_settings(None, {**TINY, "defense": defense})
    m = run_backdoor(settings, tmp_path / "run").metrics
    assert 0 <= m["clean_acc"] <= 1 and 0 <= m["asr"] <= 1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["clean_acc"] == m["clean_acc"]
    if defense["name"] == "d-br":
        assert {"clean_acc_before", "asr_before"} <= set(saved)
    if defense["name"] in ("d-br", "d-st"):  # the epoch picked by held-out acc(D_c) - acc(D_p), per epoch
        assert saved["defense_history"][0]["select"] is not None
    else:
        assert len(saved["defense_history"]) == 1 and "loss" in saved["defense_history"][0]
    if defense["name"] in ("d-br", "d-st"):
        assert {"detect_precision", "detect_recall", "clean_split_poison_rate"} <= set(saved)
        assert saved["split_sizes"] == {"clean": 100, "poisoned": 25, "uncertain": 375}
        assert (tmp_path / "run" / "fct_hist.png").stat().st_size > 1000
    else:
        assert "detect_precision" not in saved


def test_cli_detect_writes_split_metrics_and_histogram(tmp_path) -> None:
    r = CliRunner().invoke(app, ["detect", "--out", str(tmp_path / "d"), "--dataset", "sample", "--model",
                                 "cnn_small", "--train-size", "500", "--no-progress", "--set", "sd.warmup_epochs=1",
                                 "--set", "sd.finetune_epochs=0"])
    assert r.exit_code == 0, r.output
    assert "detect_precision" in r.output
    m = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert m["split_sizes"]["poisoned"] == 25 and m["poison_count"] == 50
    from advml.utils.io import load_tensors

    tensors, _ = load_tensors(tmp_path / "d" / "split.safetensors")
    assert tensors["scores"].shape == (500,)


def test_cli_defense_errors_are_one_line(tmp_path) -> None:
    r = CliRunner().invoke(app, ["backdoor", "--out", str(tmp_path / "x"), "--defense", "d_br"])
    assert r.exit_code == 2 and "did you mean 'd-br'" in r.output
    assert not (tmp_path / "x").exists()
    r = CliRunner().invoke(app, ["backdoor", "--out", str(tmp_path / "x"), "--preset", "nope"])
    assert r.exit_code == 2 and "preset" in r.output
    r = CliRunner().invoke(app, ["defenses"])
    assert r.exit_code == 0 and "d-st" in r.output


def test_preset_resolves_per_defense_settings() -> None:
    s = load_settings(None, {"defense": {"name": "d-st"}}, preset="defense_paper")
    assert s.defense["encoder"]["epochs"] == 200 and s.defense["sd"]["finetune_epochs"] == 10
    s = load_settings(None, {"defense": {"name": "d-br", "epochs": 3}}, preset="defense_paper")
    assert s.defense["epochs"] == 3 and s.defense["lr"] == 0.0001


def test_a_preset_extends_another_one_home_for_a_recipe(monkeypatch, tmp_path) -> None:
    """defense_cpu_full takes cifar_fast's airnet recipe (`extends`) and adds the defenses' settings over it."""
    import advml.experiments.base as run

    fast = load_settings(None, {}, preset="cifar_fast")
    full = load_settings(None, {"defense": {"name": "d-st"}}, preset="defense_cpu_full")
    assert full.model == fast.model == "airnet" and full.train == fast.train and full.train_size is None
    assert full.defense["sd"]["model"] == "resnet18_narrow" and full.defense["encoder"]["model"] == "resnet18_narrow"
    loop = tmp_path / "loop.yaml"
    loop.write_text("# a preset that extends itself\nextends: loop\n")
    monkeypatch.setitem(run.PRESETS._items, "loop", loop)
    with pytest.raises(ConfigError, match="extends itself"):
        load_settings(None, {}, preset="loop")
