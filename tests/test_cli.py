import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from advml.cli import app

runner = CliRunner()
ADVML = [sys.executable, "-m", "advml.cli"]


@pytest.mark.parametrize("cmd, expected", [("datasets", "cifar10"), ("models", "resnet18_narrow"),
                                           ("attacks", "badnets")])
def test_registry_listings(cmd, expected):
    r = runner.invoke(app, [cmd])
    assert r.exit_code == 0 and expected in r.output
    assert all("  " in line for line in r.output.strip().splitlines())  # one "name  description" line each


def test_real_entry_point_exit_code(tmp_path):
    r = subprocess.run([*ADVML, "backdoor", "--out", str(tmp_path / "x"), "--rate", "2"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "rate" in r.stderr


def test_backdoor_run_writes_config_and_metrics(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 1\n  augment: none\nattack:\n  size: 4\n")
    out = tmp_path / "run"
    r = runner.invoke(app, ["backdoor", "--out", str(out), "--config", str(cfg), "--train-size", "200",
                            "--test-size", "100", "--set", "train.lr=0.02", "--no-progress"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"clean_acc", "asr", "psnr", "linf", "ssim"} <= set(metrics)
    assert metrics["poison_count"] == 20 and metrics["linf"] > 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["lr"] == 0.02 and config["train"]["epochs"] == 1 and config["train"]["momentum"] == 0.9
    assert config["attack"] == {"name": "badnets", "target": 0, "rate": 0.1, "mode": "all2one", "pattern": "square",
                                "size": 4, "margin": 0, "corner": "bottom_right", "image": None, "mask": None}
    assert (out / "model.safetensors").is_file() and (out / "checkpoints" / "last.safetensors").is_file()


def test_init_weights_starts_from_given_weights(tmp_path):
    from advml.models import build_model
    from advml.utils.io import load_tensors, save_tensors

    model = build_model("cnn_small", 10)
    save_tensors(tmp_path / "w.safetensors", model.state_dict())
    r = runner.invoke(app, ["backdoor", "--out", str(tmp_path / "run"), "--init-weights",
                            str(tmp_path / "w.safetensors"), "--train-size", "100", "--test-size", "50",
                            "--epochs", "1", "--no-progress", "--set", "train.lr=1e-12", "--set", "train.momentum=0",
                            "--set", "train.weight_decay=0"])
    assert r.exit_code == 0, r.output
    trained = load_tensors(tmp_path / "run" / "model.safetensors")[0]
    conv = "backbone.0.weight"  # lr ~0: the run ends where the given weights started
    assert (trained[conv] - model.state_dict()[conv]).abs().max() < 1e-6


@pytest.mark.parametrize("attack", ["badnets", "wanet"])
def test_same_seed_gives_an_identical_metrics_file(tmp_path, attack):
    def run(name, seed):
        args = ["backdoor", "--attack", attack, "--train-size", "200", "--test-size", "100", "--epochs", "2",
                "--seed", str(seed), "--no-progress", "--set", "train.augment=standard", "--out", str(tmp_path / name)]
        assert runner.invoke(app, args).exit_code == 0

    run("a", 7), run("b", 7), run("c", 8)
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()
    assert (tmp_path / "c" / "metrics.json").read_bytes() != (tmp_path / "a" / "metrics.json").read_bytes()
