import json

import pytest
import torch
from typer.testing import CliRunner

from advml.cli import app
from advml.config import validate
from advml.errors import ConfigError
from advml.experiments import TransferSettings, run_transfer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _settings(**kw):
    base = {"dataset": "sample", "surrogate": "cnn_small", "targets": ["resnet18_narrow"], "method": "mi-ti-di",
            "iters": 12, "n_images": 12, "batch_size": 6, "progress": False,
            "zoo": {"epochs": 3, "lr": 0.05, "augment": "none", "train_size": 1000}}
    return validate(TransferSettings, {**base, **kw})


def test_transfer_run_writes_success_per_target_and_caches_the_zoo(cache, tmp_path):
    m = run_transfer(_settings(), tmp_path / "run").metrics
    assert set(m["success"]) == {"resnet18_narrow"} and 0 <= m["white_box"] <= 1
    assert set(m["success_at"]) == {"10", "12"} and m["n_images"] == 12
    for name, hits in m["outcomes"].items():  # per-image outcomes agree with the rates
        assert len(hits) == 12 and hits.count("1") / 12 == pytest.approx(m["success_at"]["12"][name])
    assert len(set(m["image_ids"])) == 12
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == m
    assert (tmp_path / "run" / "success.png").is_file()
    cached = sorted(p.parent.parent.name for p in cache.rglob("model.safetensors"))
    assert cached == ["cnn_small", "resnet18_narrow"]
    again = run_transfer(_settings(), tmp_path / "run2").metrics  # same seed, cached models: the same numbers
    assert again == m


def test_transfer_settings_errors():
    with pytest.raises(ConfigError, match="unknown transfer method"):
        _settings(method="mi-xx")
    with pytest.raises(ConfigError, match="eps"):
        _settings(eps=0)


def test_surrogate_cannot_be_a_target(cache, tmp_path):
    with pytest.raises(ConfigError, match="also a target"):
        run_transfer(_settings(targets=["cnn_small"]), tmp_path / "r")


def test_cli_transfer_bad_method_exit_2(tmp_path):
    r = CliRunner().invoke(app, ["transfer", "--method", "mi+rapp", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "did you mean 'rap'" in r.output


def test_nips17_layout(tmp_path):
    import numpy as np
    from PIL import Image

    from advml.data import load_dataset
    from advml.errors import DataError

    (tmp_path / "images").mkdir()
    rows = ["ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,OriginalLandingURL,License,Author,AuthorProfileURL"]
    for i, (true, target) in enumerate([(1, 5), (1000, 2)]):
        Image.fromarray(np.full((299, 299, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "images" / f"im{i}.png")
        rows.append(f"im{i},u,0,0,1,1,{true},{target},u,l,a,p")
    (tmp_path / "images.csv").write_text("\n".join(rows) + "\n")
    d = load_dataset(f"nips17:{tmp_path}", image_size=64)
    x, y = d.test.get_batch(torch.arange(2))
    assert x.shape == (2, 3, 64, 64) and y.tolist() == [0, 999] and d.test.targets.tolist() == [4, 1]
    (tmp_path / "images" / "im1.png").unlink()
    with pytest.raises(DataError, match="im1.png"):
        load_dataset(f"nips17:{tmp_path}")


def test_cli_transfer_starts_from_the_given_surrogate_weights(cache, tmp_path, monkeypatch):
    import numpy as np

    import advml.experiments.transfer as transfer_run
    from advml.models import build_model
    from advml.utils.io import save_tensors

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 10
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    torch.manual_seed(3)
    given = build_model("cnn_small", 10).state_dict()
    save_tensors(tmp_path / "s.safetensors", given)
    loaded = []
    real = transfer_run.load_weights

    def spy(model, path):
        loaded.append((real(model, path), str(path)))
        return loaded[-1][0]

    monkeypatch.setattr(transfer_run, "load_weights", spy)
    r = CliRunner().invoke(app, ["transfer", "--out", str(tmp_path / "run"), "--dataset", f"npz:{tmp_path / 'd.npz'}",
                                 "--surrogate", "cnn_small", "--surrogate-weights", str(tmp_path / "s.safetensors"),
                                 "--targets", "resnet18_narrow", "--iters", "2", "--n-images", "4",
                                 "--set", "only_correct=false", "--set", "progress=false", "--set", "zoo.epochs=1"])
    assert r.exit_code == 0, r.output
    (model, path), = loaded
    assert path == str(tmp_path / "s.safetensors")
    assert all(torch.equal(model.state_dict()[k].cpu(), v) for k, v in given.items())
    assert (tmp_path / "run" / "metrics.json").is_file()
