"""One contract over every name of every registry: it builds with its defaults, describes itself, its settings
round-trip through YAML, and it does its job on a few real images of the bundled sample in seconds. A new entry is
covered by this file without a line added to it. (Every model's forward pass: tests/test_models.py.)"""

from __future__ import annotations

import pytest
import torch
import yaml

from advml.backdoor.attacks import ATTACKS, build_attack
from advml.backdoor.defenses import DEFENSES, TRANSFORMS, build_defense
from advml.backdoor.defenses.fct import build_transform
from advml.data import DATASETS, load_dataset
from advml.errors import AdvmlError
from advml.evasion.methods import METHODS, compose, method_settings
from advml.experiments import EXPERIMENTS, PRESETS
from advml.experiments.base import preset_kind
from advml.models import build_model

TINY = {"clean_label": {"surrogate": {"model": "cnn_small", "epochs": 1}},  # attacks that train a clean model
        "trojannn": {"surrogate": {"model": "cnn_small", "epochs": 1}, "iters": 2}}
TINY_METHODS = {"pgn": {"samples": 2}, "vmi": {"samples": 2}}  # 2 of their 20 neighbours
NEEDS_ARGUMENT = {"npz", "imagefolder", "nips17"}  # name:<path> datasets
OFFLINE_ABSENT = {"cifar100", "gtsrb"}  # no offline copy: their error must be one line, not a traceback


@pytest.fixture(scope="module")
def sample():
    return load_dataset("sample", train_size=60, test_size=20, seed=0)


def _round_trip(describe: dict) -> dict:
    return yaml.safe_load(yaml.safe_dump(describe))


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_builds_describes_round_trips_and_poisons(name, sample, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path))
    attack = build_attack({"name": name, **TINY.get(name, {})})
    described = attack.describe()
    assert described["name"] == name and ATTACKS.title(name) and ATTACKS.describe()[ATTACKS.names().index(name)][1]
    assert build_attack(_round_trip(described)).describe() == described
    poisoned = attack.poison(sample.train, seed=0)
    assert len(poisoned) == len(sample.train) and (name == "none") == (not bool(poisoned.poison_flags.any()))
    x, _ = poisoned.get_batch(torch.arange(len(poisoned)))
    assert x.shape == (60, 3, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_builds_describes_and_round_trips(name):
    defense = build_defense(name)
    described = defense.describe()
    assert described["name"] == name == defense.name and DEFENSES.title(name)
    assert build_defense(_round_trip(described)).describe() == described
    assert DEFENSES.describe()[DEFENSES.names().index(name)][1]  # a help line, from the docstring


@pytest.mark.parametrize("name", METHODS.names())
def test_every_transfer_method_composes_and_attacks_within_eps(name, sample):
    model = build_model("cnn_small", 10, mean=sample.mean, std=sample.std).eval()
    x, y = sample.test.get_batch(torch.arange(4))
    spec = "mi" if name == "mi" else f"mi+{name}" if name.startswith("rap") else f"mi-{name}"
    attack = compose(spec, model, options={name: TINY_METHODS[name]} if name in TINY_METHODS else {},
                     eps=8 / 255, step=2 / 255, iters=2)
    adv = attack(x, y, (y + 1) % 10)
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= 8 / 255 + 1e-6 and attack.passes >= 2
    described = attack.methods[-1].describe()
    assert described["name"] == name and METHODS.describe()[METHODS.names().index(name)][1]
    settings = {k: v for k, v in _round_trip(described).items() if k != "name"}
    assert METHODS.get(name)(method_settings(spec, {name: settings})[name]).describe() == described


@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_every_fct_transform_keeps_the_image_shape(name, sample):
    x, _ = sample.train.get_batch(torch.arange(4))
    out = build_transform([name], (32, 32))(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_loads_or_says_in_one_line_what_it_needs(name):
    if name in NEEDS_ARGUMENT | OFFLINE_ABSENT or name == "cifar10":
        try:
            data = load_dataset(name, "/nonexistent-advml-data", download=False)
        except AdvmlError as e:
            assert "\n" not in str(e) and str(e)
            return
        assert len(data.train) or len(data.test)
        return
    data = load_dataset(name, train_size=20, test_size=10, seed=0)
    assert data.image_shape == (3, 32, 32) and len(data.train) == 20 and data.num_classes == 10


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_validates_for_its_kind(name):
    kind = preset_kind(name)
    settings = EXPERIMENTS.get(kind).load(None, {}, preset=name)
    again = EXPERIMENTS.get(kind).settings.model_validate(_round_trip(settings.model_dump(mode="json")))
    assert again == settings
