"""Trust: a run folder, a cache entry and a checkpoint never hand back the wrong model.

The matrix: for every (run kind, changed setting), resuming a run killed after its last checkpoint is refused with
a message naming the setting — at the run's recorded settings (config.yaml and the run marker) and, when those say
the new settings (a run redone with --overwrite whose old checkpoints survived), at the checkpoint itself; the
unchanged resume gives the uninterrupted run's bytes. Tiny 1-epoch runs on an .npz cut from the bundled sample.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest

from advml.config import dump_yaml
from advml.errors import ConfigError
from advml.provenance import differences
from advml.run import load_detect_settings, load_settings, run_backdoor, run_detect
from advml.utils.rundir import MARKER

BASE = {"train_size": 100, "test_size": 50, "model": "cnn_small",
        "train": {"epochs": 1, "progress": False, "augment": "none"}}
SD = {"warmup_epochs": 1, "finetune_epochs": 0}
KINDS = {"backdoor": {}, "defense": {"defense": {"name": "d-br", "epochs": 1, "sd": SD}}, "detect": {"sd": SD}}
# (name, settings change, key named by the recorded settings, key named by the checkpoint's fingerprint)
CHANGES = [
    ("data-content", "content", "data.content", "data.content"),
    ("dataset", {"dataset": "sample"}, "dataset (", "data.dataset ("),
    ("train-size", {"train_size": 80}, "train_size (", "data.train_size ("),
    ("attack", {"attack": {"name": "sig"}}, "attack.name (", "attack.name ("),
    ("attack-setting", {"attack": {"rate": 0.2}}, "attack.rate (", "attack.rate ("),
    ("model", {"model": "vgg11_narrow"}, "model (", "model.name ("),
    ("train", {"train": {"lr": 0.02}}, "train.lr (", "train.lr ("),
    ("seed", {"seed": 1}, "seed (", "seed ("),
    ("defense", "defense", None, None),  # another defense, or another setting of the run's (the key set below)
]
KILLED = ("metrics.json", "model.safetensors", "timing.json")  # a kill after the last checkpoint


def _save_npz(path: Path, x_train, y_train, x_test, y_test) -> None:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


@pytest.fixture(scope="module")
def npz(tmp_path_factory, sample) -> Path:
    """120 train / 60 test images of the bundled sample as an .npz (so its content can change)."""
    path = tmp_path_factory.mktemp("data") / "d.npz"
    xtr, ytr = sample.train.subset(range(0, 2000, 16)).tensors()
    xte, yte = sample.test.subset(range(0, 500, 8)).tensors()
    u8 = lambda x: x.mul(255).round().byte().permute(0, 2, 3, 1).numpy()  # noqa: E731
    _save_npz(path, u8(xtr), ytr.numpy(), u8(xte), yte.numpy())
    return path


def _settings(kind: str, npz: Path, change: dict | None = None):
    from advml.config import deep_merge

    data = deep_merge(deep_merge({**BASE, "dataset": f"npz:{npz}"}, KINDS[kind]), change or {})
    return load_detect_settings(None, data) if kind == "detect" else (load_settings(None, data), None)


def _run(kind: str, npz: Path, out: Path, change: dict | None = None, **flags):
    settings, sd = _settings(kind, npz, change)
    return run_detect(settings, sd, out, **flags) if kind == "detect" else run_backdoor(settings, out, **flags)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, npz) -> dict[str, Path]:
    """One finished run of each kind."""
    root = tmp_path_factory.mktemp("finished")
    for kind in KINDS:
        _run(kind, npz, root / kind)
    return {kind: root / kind for kind in KINDS}


def _killed(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for name in KILLED:
        (dst / name).unlink(missing_ok=True)
    return dst


@contextmanager
def _changed_content(npz: Path) -> Iterator[None]:
    """The same file, one pixel changed, while the body runs."""
    original = npz.read_bytes()
    with np.load(npz) as f:
        arrays = {k: f[k].copy() for k in f.files}
    arrays["x_train"][0, 0, 0, 0] ^= 1
    _save_npz(npz, **arrays)
    try:
        yield
    finally:
        npz.write_bytes(original)


def _delta(kind: str, change) -> dict:
    if change == "content":
        return {}
    if change == "defense":
        return ({"sd": {"warmup_epochs": 2}} if kind == "detect" else
                {"defense": {"epochs": 2}} if kind == "defense" else {"defense": {"name": "spectral"}})
    return change


@pytest.mark.parametrize("level", ["recorded-settings", "checkpoint"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name, change, recorded_key, checkpoint_key", CHANGES, ids=[c[0] for c in CHANGES])
def test_resume_with_a_changed_setting_is_refused_naming_it(finished, npz, tmp_path, kind, name, change,
                                                           recorded_key, checkpoint_key, level):
    run = _killed(finished[kind], tmp_path / "run")
    delta = _delta(kind, change)
    if level == "checkpoint":  # the recorded settings are the new run's: only the old checkpoints are left
        settings, sd = _settings(kind, npz, delta)
        (run / "config.yaml").write_text(dump_yaml(settings.model_dump(mode="json")))
        if sd is not None:
            (run / "sd.yaml").write_text(dump_yaml(sd.model_dump(mode="json")))
        (run / MARKER).unlink()
    before = {p: p.read_bytes() for p in run.rglob("*.safetensors")}
    with pytest.raises(ConfigError) as info, _changed_content(npz) if change == "content" else nullcontext():
        _run(kind, npz, run, delta, resume=True)
    message = str(info.value)
    key = recorded_key if level == "recorded-settings" else checkpoint_key
    if change == "defense":
        key = {"backdoor": "defense.name (", "defense": "defense.epochs ("}.get(kind) or \
            ("sd.warmup_epochs (" if level == "recorded-settings" else "defense.sd.warmup_epochs (")
    assert key in message and "written by a run with other settings" in message, message
    assert {p: p.read_bytes() for p in run.rglob("*.safetensors")} == before  # nothing was trained or replaced
    assert not (run / "metrics.json").exists()


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_unchanged_resume_gives_the_uninterrupted_bytes_and_sums_the_time(finished, npz, tmp_path, kind):
    run = _killed(finished[kind], tmp_path / "run")
    before = json.loads((run / MARKER).read_text())["seconds"]
    _run(kind, npz, run, resume=True)
    names = ["metrics.json"] + (["split.safetensors"] if kind == "detect" else ["model.safetensors"])
    for name in names:
        assert (run / name).read_bytes() == (finished[kind] / name).read_bytes(), name
    assert json.loads((run / "timing.json").read_text())["seconds"] > before > 0  # both processes counted


def test_overwrite_replaces_the_old_run_never_resumes_it(npz, tmp_path):
    """The issue's case: a BadNets run redone with --overwrite as a clean baseline, killed, resumed: the clean
    run's own result, not the backdoored one's."""
    out = tmp_path / "run"
    _run("backdoor", npz, out)
    clean = _run("backdoor", npz, tmp_path / "clean", {"attack": {"name": "none"}}).metrics
    _run("backdoor", npz, out, {"attack": {"name": "none"}}, overwrite=True)
    for name in KILLED:
        (out / name).unlink()
    m = _run("backdoor", npz, out, {"attack": {"name": "none"}}, resume=True).metrics
    assert m["asr"] is None and m == clean
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "clean" / "model.safetensors").read_bytes()


def test_overwrite_deletes_only_the_files_advml_wrote(finished, npz, tmp_path):
    run = _killed(finished["defense"], tmp_path / "run")
    mine = {run / "notes.txt": "mine", run / "checkpoints" / "my.txt": "mine too",
            run / "checkpoints" / "defense" / "keep" / "a.safetensors.txt": "x", run / ".config.yaml.tmp": "y"}
    for p, text in mine.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    _run("backdoor", npz, run, {"attack": {"name": "none"}}, overwrite=True)
    assert all(p.read_text() == t for p, t in mine.items())
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert left == sorted([".advml-run.json", ".config.yaml.tmp", "checkpoints/defense/keep/a.safetensors.txt",
                           "checkpoints/last.safetensors", "checkpoints/my.txt", "config.yaml", "metrics.json",
                           "model.safetensors", "notes.txt", "timing.json"]), left  # no d-br stage files left


def test_differences_name_dotted_keys_and_a_changed_method_once():
    before = {"attack": {"name": "badnets", "size": 3}, "train": {"lr": 0.01, "epochs": 1}, "seed": 0}
    after = {"attack": {"name": "sig", "delta": 40}, "train": {"lr": 0.02, "epochs": 1}, "seed": 0, "new": 1}
    assert differences(before, after) == ['attack.name ("badnets" -> "sig")', "train.lr (0.01 -> 0.02)",
                                          "new (new: 1)"]
