"""The experiments layer: one registry of run kinds used by the CLI and the bench, presets of every kind, and bench
folders that compare cells by their resolved settings."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from advml.bench import load_spec, run_bench
from advml.bench.runner import cell_settings, same_bench
from advml.bench.spec import BenchSpec
from advml.cli import app
from advml.config import validate
from advml.errors import ConfigError
from advml.experiments import EXPERIMENTS, PRESETS, load_settings, load_transfer_settings
from advml.experiments.base import preset_kind

TINY_DETECT = {"dataset": "sample", "train_size": 120, "test_size": 40, "model": "cnn_small",
               "train": {"epochs": 1, "progress": False, "augment": "none"},
               "sd": {"warmup_epochs": 1, "finetune_epochs": 0}}


def test_every_kind_validates_its_defaults_and_round_trips_its_settings():
    assert set(EXPERIMENTS.names()) == {"backdoor", "detect", "transfer"}
    for name in EXPERIMENTS:
        experiment = EXPERIMENTS.get(name)
        settings = experiment.load(None, {})
        again = experiment.settings.model_validate(yaml.safe_load(yaml.safe_dump(settings.model_dump(mode="json"))))
        assert again == settings, name


def test_presets_name_their_kind_and_are_refused_for_another():
    assert preset_kind("transfer_fast_zoo") == "transfer" and preset_kind("defense_cpu") == "backdoor"
    assert all(preset_kind(name) in {"backdoor", "transfer"} for name in PRESETS)
    zoo = load_transfer_settings(None, {"n_images": 10}, preset="transfer_fast_zoo")
    assert zoo.zoo.epochs == 20 and zoo.zoo.for_arch("vit_tiny").lr == 0.001 and zoo.n_images == 10
    with pytest.raises(ConfigError, match="preset 'defense_cpu' is for backdoor runs, not transfer runs"):
        load_transfer_settings(None, {}, preset="defense_cpu")
    with pytest.raises(ConfigError, match="is for transfer runs, not backdoor runs"):
        load_settings(None, {}, preset="transfer_fast_zoo")


def test_advml_transfer_takes_a_preset_and_refuses_one_of_another_kind_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["transfer", "--out", str(tmp_path / "r"), "--preset", "demo"])
    assert result.exit_code == 2 and "is for backdoor runs, not transfer runs" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def _spec(settings: dict, preset: str | None = None) -> BenchSpec:
    scale = {"settings": settings, **({"preset": preset} if preset else {})}
    return validate(BenchSpec, {"name": "t", "kind": "transfer", "grid": {"eps": [8, 16]}, "presets": {"cpu": scale},
                                "table": {"rows": ["eps"], "values": {"white_box": "wb"}}})


def test_moving_a_scale_s_settings_into_a_packaged_preset_keeps_the_bench_folder():
    """Bench folders compare cells by their resolved run settings, not by where the spec wrote them."""
    inline = yaml.safe_load(PRESETS.get("transfer_fast_zoo").read_text())
    inline.pop("kind")
    before = _spec({**inline, "n_images": 50})
    assert same_bench(before, _spec({"n_images": 50}, "transfer_fast_zoo"), "cpu")
    assert not same_bench(before, _spec({"n_images": 60}, "transfer_fast_zoo"), "cpu")
    assert not same_bench(before, _spec({"n_images": 50}), "cpu")  # the zoo recipe is gone: other settings
    assert cell_settings(before, "cpu", before.cells("cpu")[0])["zoo"]["epochs"] == 20


def test_the_regime_spec_s_cells_are_those_of_its_inline_edition():
    spec = load_spec("configs/seed/table3_regime.yaml")
    cpu = spec.presets["cpu"]
    assert cpu.preset == "transfer_fast_zoo" and "zoo" not in cpu.settings
    assert cell_settings(spec, "cpu", spec.cells("cpu")[0])["zoo"]["train"]["schedule"] == "onecycle"


def test_a_bench_of_detect_runs_records_the_split_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path / "cache"))
    spec = validate(BenchSpec, {
        "name": "detect", "kind": "detect", "grid": {"attack.name": ["badnets"]},
        "presets": {"smoke": {"settings": TINY_DETECT}},
        "table": {"rows": ["attack.name"], "values": {"detect_precision": "D_p precision"}}})
    out = run_bench(spec, "smoke", tmp_path / "b", progress=False)
    cell = next((out / "cells").iterdir())
    assert {"config.yaml", "sd.yaml", "split.safetensors", "metrics.json"} <= {p.name for p in cell.iterdir()}
    assert "D_p precision" in (out / "report.md").read_text()
    again = run_bench(spec, "smoke", tmp_path / "b", progress=False)  # finished: its recorded settings match
    assert again == out
    with pytest.raises(ConfigError, match="unknown experiment 'detection'"):
        validate(BenchSpec, {**spec.model_dump(), "kind": "detection"})


def test_run_settings_validate_attack_and_defense_without_building_them(monkeypatch):
    """Validation resolves the settings (defaults included, as describe() would) but builds no attack or defense;
    the settings' own checks still apply (ISSBA's packet)."""
    from advml.backdoor.attacks import ATTACKS, build_attack
    from advml.backdoor.defenses import DEFENSES, build_defense
    from advml.component import Component

    expected = (build_attack({"name": "issba", "secret": "b"}).describe(), build_defense("d-br").describe())

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} was built while validating settings")

    for cls in {*map(ATTACKS.get, ATTACKS.names()), *map(DEFENSES.get, DEFENSES.names()), Component}:
        monkeypatch.setattr(cls, "__init__", refuse)
    s = load_settings(None, {"attack": {"name": "issba", "secret": "b"}, "defense": "d-br"})
    assert (s.attack, s.defense) == expected
    with pytest.raises(ConfigError, match="100-bit packet"):
        load_settings(None, {"attack": {"name": "issba", "packet": "issba", "data_bytes": 7}})
    with pytest.raises(ConfigError, match="no room for a BCH code"):  # the secret must fit the bits
        load_settings(None, {"attack": {"name": "issba", "secret": "ab"}})
