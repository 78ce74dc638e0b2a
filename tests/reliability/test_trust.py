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
import torch
from helpers.paths import ROOT

from advml.config import dump_yaml
from advml.errors import ConfigError
from advml.experiments import load_detect_settings, load_settings, run_backdoor, run_detect
from advml.provenance import differences
from advml.utils.rundir import MARKER

BASE = {"train_size": 100, "test_size": 50, "model": "cnn_small",
        "train": {"epochs": 1, "progress": False, "augment": "none"}}
SD = {"warmup_epochs": 1, "finetune_epochs": 0}
KINDS = {"backdoor": {}, "defense": {"defense": {"name": "d-br", "epochs": 1, "holdout_fraction": 0.5, "sd": SD}},
         "detect": {"sd": SD}}
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
                           "checkpoints/last.safetensors", "checkpoints/last.timing.json", "checkpoints/my.txt",
                           "config.yaml", "metrics.json",
                           "model.safetensors", "notes.txt", "timing.json"]), left  # no d-br stage files left


def test_differences_name_dotted_keys_and_a_changed_method_once():
    before = {"attack": {"name": "badnets", "size": 3}, "train": {"lr": 0.01, "epochs": 1}, "seed": 0}
    after = {"attack": {"name": "sig", "delta": 40}, "train": {"lr": 0.02, "epochs": 1}, "seed": 0, "new": 1}
    assert differences(before, after) == ['attack.name ("badnets" -> "sig")', "train.lr (0.01 -> 0.02)",
                                          "new (new: 1)"]


# --- caches: the zoo and ISSBA's encoders ------------------------------------------------------------------

def _tiny_npz(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 10
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_npz(path, x, y, x[:20], y[:20])
    return path


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    from advml.evasion.zoo import ZooSettings

    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path / "cache"))
    return ZooSettings(epochs=1, batch_size=16)


def test_a_zoo_entry_is_never_served_for_other_data_typed_alike(tmp_path, monkeypatch, zoo):
    """`npz:d.npz` from two folders, and `npz:a/b.npz` vs `npz:a_b.npz`, each get their own model."""
    from advml.data import load_dataset
    from advml.evasion.zoo import entry, zoo_model

    folders = []
    for i, (cwd, spec) in enumerate([("one", "d.npz"), ("two", "d.npz"), ("three", "a/b.npz"), ("three", "a_b.npz")]):
        _tiny_npz(tmp_path / cwd / spec, seed=i)
        monkeypatch.chdir(tmp_path / cwd)
        data = load_dataset(f"npz:{spec}")
        _, info = zoo_model(data, "cnn_small", zoo, progress=False)
        assert info["data_fingerprint"] == data.fingerprint() and info["source"] == str((tmp_path / cwd / spec))
        folders.append(entry(data, "cnn_small", zoo))
    assert len(set(folders)) == 4 and all((f / "model.safetensors").is_file() for f in folders)
    same = load_dataset(f"npz:{tmp_path / 'one' / 'd.npz'}")  # the same file by another spelling: the same entry
    assert entry(same, "cnn_small", zoo) == folders[0]


def test_a_zoo_entry_made_from_other_data_is_refused_on_load(tmp_path, zoo):
    from advml.data import load_dataset
    from advml.errors import DataError
    from advml.evasion.zoo import entry, zoo_model

    a, b = (load_dataset(f"npz:{_tiny_npz(tmp_path / n, seed=s)}") for n, s in (("a.npz", 0), ("b.npz", 1)))
    zoo_model(a, "cnn_small", zoo, progress=False)
    planted = entry(b, "cnn_small", zoo)  # a's entry copied to where b's would be
    shutil.copytree(entry(a, "cnn_small", zoo), planted)
    with pytest.raises(DataError, match=r"made from other data or settings \(.*data_fingerprint"):
        zoo_model(b, "cnn_small", zoo, progress=False)
    for name in ("model.safetensors", "info.json"):  # only a's training checkpoint is left there
        (planted / name).unlink()
    with pytest.raises(ConfigError, match=r"other settings: .*data_fingerprint.*delete .* to retrain it"):
        zoo_model(b, "cnn_small", zoo, progress=False)


def test_a_zoo_entry_is_keyed_by_the_precision_it_trained_in(tmp_path, zoo):
    """bf16 and float32 training give different models: each has its own entry, and one is never read as the other."""
    from advml.data import load_dataset
    from advml.errors import DataError
    from advml.evasion.zoo import entry, zoo_model

    data = load_dataset(f"npz:{_tiny_npz(tmp_path / 'a.npz', seed=0)}")
    fp32, bf16 = zoo.model_copy(update={"amp": False}), zoo.model_copy(update={"amp": True})
    assert "-fp32-d" in entry(data, "cnn_small", fp32).name and "-bf16-d" in entry(data, "cnn_small", bf16).name
    _, info = zoo_model(data, "cnn_small", fp32, progress=False)
    assert info["precision"] == "float32" and info["settings"]["amp"] is False
    shutil.copytree(entry(data, "cnn_small", fp32), entry(data, "cnn_small", bf16))  # planted where bf16's would be
    with pytest.raises(DataError, match=r"made from other data or settings \(.*(precision|amp)"):
        zoo_model(data, "cnn_small", bf16, progress=False)


def test_a_zoo_recipe_is_part_of_the_entry_and_reaches_the_trainer(tmp_path, zoo):
    """zoo.train (the trainer's further settings) names its own entry, is validated with suggestions, and trains."""
    from advml.data import load_dataset
    from advml.evasion.zoo import ZooSettings, entry, zoo_model

    data = load_dataset(f"npz:{_tiny_npz(tmp_path / 'a.npz', seed=0)}")
    fast = zoo.model_copy(update={"train": {"schedule": "onecycle", "label_smoothing": 0.2}})
    plain, recipe = entry(data, "cnn_small", zoo), entry(data, "cnn_small", fast)
    assert plain != recipe and "-t" in recipe.name.split("-d")[-2] and "-t" not in plain.name
    assert fast.config().schedule == "onecycle" and fast.config().label_smoothing == 0.2
    _, info = zoo_model(data, "cnn_small", fast, progress=False)
    assert info["settings"]["train"] == {"schedule": "onecycle", "label_smoothing": 0.2}
    with pytest.raises(ConfigError, match="label_smoothing"):
        ZooSettings(train={"label_smoothin": 0.2})
    with pytest.raises(ConfigError, match="as zoo settings"):
        ZooSettings(train={"epochs": 3})


def test_per_architecture_zoo_settings_key_only_their_own_entry(tmp_path, zoo):
    from advml.data import load_dataset
    from advml.evasion.zoo import ZooSettings, entry

    data = load_dataset(f"npz:{_tiny_npz(tmp_path / 'a.npz', seed=0)}")
    mixed = zoo.model_copy(update={"models": {"vit_tiny": {"lr": 0.001, "train": {"optimizer": "adam"}}}})
    assert entry(data, "cnn_small", mixed) == entry(data, "cnn_small", zoo)  # another arch's override: same entry
    assert entry(data, "vit_tiny", mixed) != entry(data, "vit_tiny", zoo)
    vit = mixed.for_arch("vit_tiny")
    assert vit.lr == 0.001 and vit.config().optimizer == "adam" and vit.models == {} and vit.epochs == zoo.epochs
    with pytest.raises(ConfigError, match="model"):
        ZooSettings(models={"vit_tinny": {"lr": 0.1}})


def test_a_cached_issba_encoder_is_keyed_by_the_whole_content_and_checked(tmp_path, monkeypatch):
    from advml.backdoor.attacks.issba import ISSBA, cache_entry
    from advml.data import TensorImageDataset
    from advml.errors import DataError

    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    y = np.arange(40) % 10
    a = TensorImageDataset(x, y, [str(c) for c in range(10)])
    x2 = x.copy()
    x2[20, 0, 0, 0] ^= 1  # one pixel in the middle: the old key (first/last 16 images) could not see it
    b = TensorImageDataset(x2, y, a.classes)
    tiny = {"width": 4, "depth": 2, "epochs": 1, "secret_only_epochs": 0, "ramp_epochs": 0, "batch_size": 16,
            "bits": 20}
    attack = ISSBA(encoder="train", stegastamp=tiny)
    assert cache_entry(attack.settings.stegastamp, a) != cache_entry(attack.settings.stegastamp, b)
    attack.prepare(a, 0)
    shutil.copytree(cache_entry(attack.settings.stegastamp, a), cache_entry(attack.settings.stegastamp, b))
    with pytest.raises(DataError, match="trained with other settings or data"):
        ISSBA(encoder="train", stegastamp=tiny).prepare(b, 0)


# --- checkpoints: every tensor and record checked; a finished model measured, never its record repeated ------

def _damage(ckpt: Path, fn) -> None:
    from advml.utils.io import load_tensors, save_tensors

    tensors, meta = load_tensors(ckpt)
    fn(tensors, meta)
    save_tensors(ckpt, tensors, meta)


def _first_weight(t: dict) -> str:
    return next(k for k, v in t.items() if k.startswith("model.") and v.is_floating_point() and v.ndim > 1)


DAMAGES = {
    "nan-weights": (lambda t, m: t[_first_weight(t)].fill_(float("nan")), "hold NaN or inf values"),
    "inf-momentum": (lambda t, m: t[next(k for k in t if k.startswith("optim."))].fill_(float("inf")),
                     "optimiser state"),
    "wrong-shape": (lambda t, m: t.update({_first_weight(t): t[_first_weight(t)][:1]}), "of another shape"),
    "missing-key": (lambda t, m: t.pop(_first_weight(t)), "1 missing"),
    "extra-key": (lambda t, m: t.update({"model.extra.weight": torch.zeros(2)}), "1 unexpected"),
    "optim-shape": (lambda t, m: t.update({k: t[k][:1] for k in [next(k for k in t if k.startswith("optim."))]}),
                    "does not fit the model"),
    "optim-foreign-id": (lambda t, m: t.update({"optim.999.momentum_buffer": torch.zeros(3)}),
                         "does not fit the model"),
    "rng-dtype": (lambda t, m: t.update({"rng.data": t["rng.data"].float()}), "rng.data is not a random generator"),
    "rng-missing": (lambda t, m: t.pop("rng.torch"), "rng.torch is not a random generator"),
    "history-not-list": (lambda t, m: m.update({"history": '{"a": 1}'}), "history or optimiser groups"),
    "history-not-json": (lambda t, m: m.update({"history": "[{"}), "unreadable progress record"),
    "epoch-beyond": (lambda t, m: m.update({"epoch": "7"}), "its epoch (7)"),
    "epoch-missing": (lambda t, m: m.pop("epoch"), "unreadable progress record"),
    "groups-wrong": (lambda t, m: m.update({"param_groups": "[]"}), "history or optimiser groups"),
    "fingerprint-not-json": (lambda t, m: m.update({"advml_run": "{"}), "run fingerprint is not JSON"),
    "fingerprint-gone": (lambda t, m: m.pop("advml_run"), "carries no run fingerprint"),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_but_parseable_checkpoint_is_refused_never_loaded(finished, npz, tmp_path, name):
    from advml.errors import AdvmlError

    run = _killed(finished["backdoor"], tmp_path / "run")
    fn, fragment = DAMAGES[name]
    _damage(run / "checkpoints" / "last.safetensors", fn)
    with pytest.raises(AdvmlError) as info:
        _run("backdoor", npz, run, resume=True)
    assert fragment in str(info.value) and "last.safetensors" in str(info.value), info.value
    assert not (run / "metrics.json").exists() and not (run / "model.safetensors").exists()


def test_a_damaged_best_epoch_file_is_refused(finished, npz, tmp_path):
    from advml.errors import DataError

    run = _killed(finished["defense"], tmp_path / "run")
    best = next(run.rglob("best.safetensors"))
    _damage(best, lambda t, m: t[next(k for k, v in t.items() if v.is_floating_point())].fill_(float("nan")))
    with pytest.raises(DataError, match="best.safetensors: damaged checkpoint, 1 tensors hold NaN"):
        _run("defense", npz, run, resume=True)


def test_a_finished_checkpoint_with_altered_weights_is_measured_not_its_history_repeated(finished, npz, tmp_path):
    from advml.data import load_dataset
    from advml.metrics import accuracy
    from advml.models import build_model, load_weights

    run = _killed(finished["backdoor"], tmp_path / "run")
    recorded = json.loads((finished["backdoor"] / "metrics.json").read_text())
    assert recorded["asr"] < 0.9
    bias = lambda t: next(k for k in reversed(list(t)) if k.startswith("model.") and k.endswith("bias"))  # noqa: E731
    _damage(run / "checkpoints" / "last.safetensors", lambda t, m: t[bias(t)].copy_(torch.eye(10)[0] * 1e4))
    m = _run("backdoor", npz, run, resume=True).metrics  # every image now goes to class 0, the attack's target
    data = load_dataset(f"npz:{npz}", train_size=100, test_size=50)
    model = load_weights(build_model("cnn_small", 10, mean=data.mean, std=data.std), run / "model.safetensors")
    assert m["clean_acc"] == accuracy(model, data.test) and m["asr"] == 1.0
    assert m["history"] == recorded["history"]  # the training record itself is kept as it was


# --- deletion: only files advml named, in folders advml made -----------------------------------------------

USER_TEMPS = [".notes.txt.ab12cd.tmp", "mine/.last.safetensors.zz9_x.tmp", "mine/.metrics.json.q1w2e3.tmp",
              ".draft.tmp"]
ADVML_TEMPS = [".metrics.json.k1ll3d.tmp", ".config.yaml.abc_12.tmp", "checkpoints/.last.safetensors.x1y2z3.tmp"]


@pytest.mark.parametrize("via", ["resume", "bench-cell"])
def test_a_killed_writers_temp_files_are_cleared_but_never_a_users(finished, npz, tmp_path, via):
    from advml.bench.runner import run_cell

    run = _killed(finished["backdoor"], tmp_path / "run")
    for name in USER_TEMPS + ADVML_TEMPS:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    if via == "resume":
        _run("backdoor", npz, run, resume=True)
    else:
        settings, _ = _settings("backdoor", npz)
        run_cell("backdoor", settings.model_dump(mode="json"), str(run))
    assert all((run / n).read_text() == "x" for n in USER_TEMPS)
    assert not any((run / n).exists() for n in ADVML_TEMPS)
    assert (run / "metrics.json").read_bytes() == (finished["backdoor"] / "metrics.json").read_bytes()


@pytest.mark.parametrize("flag", ["resume", "overwrite"])
def test_a_folder_advml_did_not_make_is_neither_resumed_nor_overwritten(npz, tmp_path, flag):
    folder = tmp_path / "mine"
    names = ["checkpoints/.last.safetensors.x1y2z3.tmp", "checkpoints/last.safetensors", ".metrics.json.k1ll3d.tmp",
             "model.safetensors", "notes.txt"]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("mine")
    with pytest.raises(ConfigError, match="holds files but no advml run"):
        _run("backdoor", npz, folder, **{flag: True})
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(names)


def test_a_bad_input_leaves_no_folder_behind_and_an_existing_one_as_it_was(tmp_path):
    from advml.errors import DataError

    deep = tmp_path / "a" / "b" / "run"
    with pytest.raises(DataError):
        run_backdoor(load_settings(None, {**BASE, "dataset": f"npz:{tmp_path / 'none.npz'}"}), deep)
    assert not (tmp_path / "a").exists()


# --- one run per folder at a time ----------------------------------------------------------------------------

HOLD = ("import sys, time; from advml.utils.rundir import open_run; f = open_run(sys.argv[1], 'backdoor', "
        "resume=False, overwrite=False); print('locked', flush=True); time.sleep(60)")


def test_a_second_run_into_a_folder_in_use_exits_2_naming_the_holder(npz, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from typer.testing import CliRunner

    from advml.cli import app

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for flags in ([], ["--resume"], ["--overwrite"]):
            r = CliRunner().invoke(app, ["backdoor", "--out", str(out), "--dataset", f"npz:{npz}", "--epochs", "1",
                                         "--no-progress", *flags])
            assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
            assert f"is in use by another advml run (pid {holder.pid} on {socket.gethostname()}" in r.output
        assert sorted(p.name for p in out.iterdir()) == [".advml.lock"]  # nothing written beside the holder
    finally:
        holder.kill()
        holder.wait()
    r = CliRunner().invoke(app, ["backdoor", "--out", str(out), "--dataset", f"npz:{npz}", "--epochs", "1",
                                 "--train-size", "100", "--test-size", "50", "--no-progress"])
    assert r.exit_code == 0, r.output  # a killed holder's lock file is stale: the next run takes it
    assert not (out / ".advml.lock").exists()


def test_two_runs_in_one_process_cannot_share_a_folder_and_a_bench_folder_is_locked_too(tmp_path):
    from advml.utils.rundir import RunFolder, open_run

    first = open_run(tmp_path / "run", "backdoor", resume=False, overwrite=False)
    try:
        with pytest.raises(ConfigError, match=r"in use by another advml run \(pid \d+ on "):
            open_run(tmp_path / "run", "detect", resume=True, overwrite=False)
        bench = RunFolder(tmp_path / "bench", "bench")
        bench.acquire()
        with pytest.raises(ConfigError, match="in use"):
            RunFolder(tmp_path / "bench", "bench").acquire()
        bench.release()
    finally:
        first.release()
    assert not (tmp_path / "run").exists() and not (tmp_path / "bench").exists()  # made, never used: removed


# --- bench specs: figures and names are plain file names inside the bench's own folders ----------------------

def _spec(**changes):
    from advml.bench.spec import BenchSpec
    from advml.config import deep_merge, validate

    data = {"name": "t", "kind": "backdoor", "grid": {"attack.name": ["badnets"]},
            "presets": {"smoke": {"settings": {"dataset": "sample"}}},
            "table": {"rows": ["attack.name"], "values": {"clean_acc": "ACC"}, "figures": ["fct_hist.png"]}}
    return validate(BenchSpec, deep_merge(data, changes), "spec.yaml")


@pytest.mark.parametrize("changes, key", [
    ({"table": {"figures": ["../../../etc/passwd"]}}, "table.figures"),
    ({"table": {"figures": ["/etc/passwd"]}}, "table.figures"),
    ({"table": {"figures": ["sub/x.png"]}}, "table.figures"),
    ({"table": {"figures": [".."]}}, "table.figures"),
    ({"presets": {"smoke": {"table": {"rows": ["attack.name"], "values": {"asr": "ASR"},
                                      "figures": ["../x.png"]}}}}, "presets.smoke.table.figures"),
    ({"name": "../../escape"}, "name"),
    ({"name": "a/b"}, "name"),
    ({"name": ""}, "name"),
    ({"presets": {"../up": {}}}, "presets"),
])
def test_a_spec_naming_paths_outside_its_folders_is_refused(changes, key):
    with pytest.raises(ConfigError) as info:
        _spec(**changes)
    assert f"spec.yaml.{key}" in str(info.value) and "plain file name" in str(info.value), info.value


def test_only_regular_png_files_of_the_cell_folder_are_recorded(tmp_path):
    from advml.bench.runner import _record
    from advml.bench.spec import Cell
    from advml.bench.store import ResultStore

    cell = tmp_path / "cells" / "c1"
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text('{"clean_acc": 0.5}')
    png = b"\x89PNG\r\n\x1a\n" + bytes(20)
    (cell / "good.png").write_bytes(png)
    (tmp_path / "secret.png").write_bytes(png + b"secret")
    (cell / "link.png").symlink_to(tmp_path / "secret.png")
    (cell / "text.png").write_text("root:x:0:0")
    store = ResultStore(tmp_path / "results.sqlite")
    try:
        _record(store, Cell({"attack.name": "badnets"}), cell, ["good.png", "link.png", "text.png", "none.png"], "v")
        assert store.figures() == {Cell({"attack.name": "badnets"}).id: {"good.png": png}}
    finally:
        store.close()


def test_a_defense_stage_counts_the_seconds_of_every_process_that_ran_it(tmp_path):
    """ComputeLog inside a run: a resumed stage reports its earlier processes' seconds (as saved at their last
    checkpoint) plus this one's; the run's total does the same."""
    import time

    from advml.backdoor.defenses.compute import ComputeLog
    from advml.provenance import RunScope, run_scope

    saved = []
    scope = RunScope(tmp_path, {"seed": 0}, previous={"seconds": 100.0, "stages": {"defense.encoder": 40.0}},
                     save=saved.append)
    log = ComputeLog()
    with run_scope(scope):
        with log.stage("encoder", epochs=2, images=10):
            time.sleep(0.05)
            scope.save()  # what a checkpoint does
        with log.stage("classifier", epochs=1, images=10):
            pass
    assert 40.05 <= log.stages["encoder"]["seconds"] < 41 and log.stages["classifier"]["seconds"] < 1
    assert saved[0]["stages"]["defense.encoder"] >= 40.05 and saved[0]["seconds"] >= 100.05
    assert scope.progress()["stages"]["defense.encoder"] == pytest.approx(log.stages["encoder"]["seconds"], abs=1e-3)
    assert ComputeLog().report()["seconds"] == 0  # outside a run: this process's time only


def test_a_reused_backdoored_model_is_the_one_its_fingerprint_names(tmp_path, monkeypatch):
    """`reuse_backdoored`: the no-defense run trains and caches the backdoored model; a D-BR run of the same data,
    attack, model, training and seed loads it (and measures it again) instead of training; any other setting is
    another entry; an entry planted under another fingerprint is refused."""
    import shutil as sh

    from advml import model_cache
    from advml.errors import DataError
    from advml.experiments import load_settings, run_backdoor

    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path / "cache"))
    tiny = {"dataset": "sample", "train_size": 300, "test_size": 100, "model": "cnn_small", "reuse_backdoored": True,
            "train": {"epochs": 1, "progress": False, "augment": "none"}}
    sd = {"warmup_epochs": 1, "finetune_epochs": 0}
    first = run_backdoor(load_settings(None, {**tiny, "defense": "none"}), tmp_path / "none").metrics
    entries = list((tmp_path / "cache" / "backdoored" / "cnn_small").iterdir())
    assert len(entries) == 1 and (entries[0] / "model.safetensors").is_file() and "backdoored_from_cache" not in first
    again = run_backdoor(load_settings(None, {**tiny, "defense": {"name": "d-br", "epochs": 1, "sd": sd}}),
                         tmp_path / "dbr").metrics
    assert again["backdoored_from_cache"] == str(entries[0])
    assert (again["clean_acc_before"], again["asr_before"]) == (first["clean_acc"], first["asr"])
    assert json.loads((tmp_path / "dbr" / "timing.json").read_text())["reused"] == str(entries[0])
    assert not (tmp_path / "dbr" / "checkpoints" / "last.safetensors").exists()  # nothing trained
    other = run_backdoor(load_settings(None, {**tiny, "defense": "none", "seed": 1}), tmp_path / "seed1").metrics
    assert "backdoored_from_cache" not in other and len(list(entries[0].parent.iterdir())) == 2
    off = run_backdoor(load_settings(None, {**tiny, "reuse_backdoored": False, "defense": "none"}), tmp_path / "off")
    assert "backdoored_from_cache" not in off.metrics and len(list(entries[0].parent.iterdir())) == 2
    # an entry copied to where another model's would be: refused, naming the folder
    data_other = load_settings(None, {**tiny, "train": {**tiny["train"], "lr": 0.02}, "defense": "none"})
    from advml.data import load_dataset

    data = load_dataset("sample", train_size=300, test_size=100, seed=0)
    from advml.experiments.backdoor import backdoored_key as _backdoored_key
    from advml.models import build_model

    model = build_model("cnn_small", 10, mean=data.mean, std=data.std)
    planted = model_cache.entry(_backdoored_key(data_other, data, model))
    sh.copytree(entries[0], planted)
    with pytest.raises(DataError, match="made from other data or settings"):
        run_backdoor(data_other, tmp_path / "planted")
