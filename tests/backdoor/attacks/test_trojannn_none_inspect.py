import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from advml.backdoor import build_attack
from advml.backdoor.inspect import stealth_table, trigger_figure
from advml.cli import app
from advml.errors import ConfigError
from advml.models import build_model
from advml.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def clean_model(sample):
    torch.manual_seed(0)
    model = build_model("cnn_small", 10, mean=sample.mean, std=sample.std)
    Trainer(model, TrainConfig(epochs=1, lr=0.05, augment="none", progress=False)).fit(sample.train)
    return model.eval()


def test_trojannn_trigger_excites_the_chosen_neurons(sample, clean_model):
    attack = build_attack("trojannn", iters=100, target=3)
    attack.model = clean_model
    p = attack.poison(sample.train, seed=0)
    r = attack.report
    assert r["activation_after"] > 1.5 * r["activation_before"]  # from the random start inside the mask
    # on real images the trigger lifts the chosen neurons far above their clean level (about their 99th pct)
    x, _ = sample.test.get_batch(torch.arange(300))
    with torch.no_grad():
        clean_act = clean_model.features(x)[:, r["neurons"]]
        trig_act = clean_model.features(attack.trigger_for(sample.test).apply(x))[:, r["neurons"]]
    assert trig_act.mean() > 3 * clean_act.mean()
    # the trigger only touches the (resized apple) mask; labels go to the target
    mask = attack.trigger_for(sample.train).mask[0].bool()
    assert 0 < mask.sum() < 0.2 * mask.numel()
    dirty, labels = p.get_batch(p.poison_indices)
    clean, _ = sample.train.get_batch(p.poison_indices)
    assert torch.equal(dirty[:, :, ~mask], clean[:, :, ~mask]) and labels.eq(3).all()
    assert len(p.poison_indices) == 200


def test_trojannn_needs_preparation_and_a_head(sample):
    with pytest.raises(ConfigError, match="prepare"):
        build_attack("trojannn").trigger_for(sample.train)
    attack = build_attack("trojannn", iters=1)
    attack.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10))
    with pytest.raises(ConfigError, match="features"):
        attack.poison(sample.train)


def test_no_attack_poisons_nothing(sample):
    attack = build_attack("none")
    p = attack.poison(sample.train, seed=0)
    assert len(p.poison_indices) == 0 and not p.poison_flags.any()
    assert torch.equal(p.tensors()[0], sample.train.tensors()[0]) and torch.equal(p.labels, sample.train.labels)
    assert attack.backdoor_test_set(sample.test) is None


def test_trigger_figure_and_stealth_table(sample, tmp_path):
    figures = trigger_figure(build_attack("blend_strip"), sample, tmp_path / "f.png", n=4)
    with Image.open(tmp_path / "f.png") as im:
        assert im.size[0] > im.size[1] > 100
    assert 40 < figures["linf"] <= 51.0  # at most 0.2 x 255
    rows = stealth_table(sample, tmp_path / "s", attacks=["badnets", "blend_strip", "sig"], n=50)
    assert [r["attack"] for r in rows] == ["badnets", "blend_strip", "sig"]
    saved = json.loads((tmp_path / "s" / "stealth.json").read_text())
    assert saved["images"] == 50 and saved["rows"] == rows
    assert "| sig |" in (tmp_path / "s" / "stealth.md").read_text()
    assert rows[2]["linf"] <= 40.0 + 1e-3  # SIG's train-time amplitude


def test_cli_triggers_and_stealth(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["triggers", "--attack", "badnets", "--set", "size=5", "--out", str(tmp_path / "b.png")])
    assert r.exit_code == 0 and (tmp_path / "b.png").is_file(), r.output
    r = runner.invoke(app, ["stealth", "--attacks", "badnets", "--n", "20", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0 and "| badnets |" in r.output
    r = runner.invoke(app, ["triggers", "--attack", "badnets", "--set", "sise=5", "--out", str(tmp_path / "c.png")])
    assert r.exit_code == 2 and "did you mean 'size'" in r.output


def test_stealth_skips_or_caches_the_attacks_that_train_a_model(tmp_path, monkeypatch):
    from advml.data import load_dataset
    from advml.train import Trainer

    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path / "cache"))
    data = load_dataset("sample", train_size=100, test_size=50)
    runner = CliRunner()
    r = runner.invoke(app, ["stealth", "--attacks", "badnets,clean_label", "--skip-model-attacks", "--n", "10",
                            "--out", str(tmp_path / "s")])
    assert r.exit_code == 0 and "| badnets |" in r.output and "| clean_label |" not in r.output, r.output
    assert json.loads((tmp_path / "s" / "stealth.json").read_text())["skipped"] == ["clean_label"]
    assert not (tmp_path / "cache").exists()  # nothing trained
    fits = []
    original = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: fits.append(1) or original(self, *a, **k))
    fast = {"clean_label": {"surrogate": {"model": "cnn_small", "epochs": 1}}}
    first = stealth_table(data, tmp_path / "a", attacks=["clean_label"], n=10, settings=fast)
    assert len(fits) == 1 and list((tmp_path / "cache" / "zoo").rglob("model.safetensors"))
    second = stealth_table(data, tmp_path / "b", attacks=["clean_label"], n=10, settings=fast)
    assert len(fits) == 1 and first == second  # the cached model, not a second training
    r = runner.invoke(app, ["stealth", "--attacks", "badnets,nope", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "unknown attack 'nope'" in r.output
