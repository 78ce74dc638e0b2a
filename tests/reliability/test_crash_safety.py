"""Crash safety: runs killed with SIGKILL at random points resume (`--resume`) to the bytes of an uninterrupted
run; every write is atomic, so a reader never sees a half-written file; a damaged checkpoint is refused, never
loaded; temporary files left by a killed writer are never read and are cleared on resume."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.paths import ROOT
from safetensors import safe_open
from typer.testing import CliRunner

from advml.cli import app
from advml.utils.io import remove_stale_temps, write_json

ADVML = [sys.executable, "-m", "advml"]
RUN = ["backdoor", "--dataset", "sample", "--model", "cnn_small", "--train-size", "200", "--test-size", "100",
       "--epochs", "5", "--seed", "3", "--no-progress", "--set", "train.augment=standard"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _checkpoint_epoch(ckpt: Path, reads: list[int]) -> int:
    """The epoch recorded in the checkpoint (0 if none yet); every read must succeed: no half-written file."""
    if not ckpt.is_file():
        return 0
    with safe_open(str(ckpt), framework="pt") as f:  # checks the header and that the file holds all it announces
        meta = f.metadata()
    reads.append(int(meta["epoch"]))
    return int(meta["epoch"])


@pytest.mark.slow
def test_random_sigkills_then_resume_give_the_uninterrupted_bytes(tmp_path):
    """3 SIGKILLs at seeded-random points (in setup, mid-epoch, in evaluation or a checkpoint write), a `--resume`
    after each; the finished run's metrics.json and model.safetensors equal an uninterrupted run's, byte for byte.
    Each kill comes a random fraction of an epoch after the run has made progress (setup done, or one more epoch
    checkpointed), so that every kill lands before the run ends."""
    rng = random.Random(int(os.environ.get("ADVML_KILL_SEED", "2024")))  # another seed: other kill points
    env = _env()
    full = subprocess.Popen([*ADVML, *RUN, "--out", str(tmp_path / "full")], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # in parallel with the killed chain
    cut = tmp_path / "cut"
    ckpt = cut / "checkpoints" / "last.safetensors"
    reads: list[int] = []
    kills: list[dict] = []
    epoch_dt, measured = 0.5, False  # seconds per epoch, measured between checkpoints
    for k in range(3):
        args = [*ADVML, *RUN, "--out", str(cut)] + (["--resume"] if k else [])
        start_epoch = _checkpoint_epoch(ckpt, reads)
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline, last = time.time() + 180, None
        while proc.poll() is None and time.time() < deadline:  # wait for progress: setup done, or one more epoch
            epoch = _checkpoint_epoch(ckpt, reads)
            if k == 0 and (cut / "config.yaml").is_file():
                break
            if epoch > start_epoch:
                if last is not None and epoch == last[0] + 1:  # two consecutive checkpoints: one epoch's time
                    epoch_dt, measured = time.time() - last[1], True
                    break
                if measured:
                    break
                last = (epoch, time.time()) if last is None or epoch != last[0] else last
            time.sleep(0.03)
        delay = rng.uniform(0, 0.8 * epoch_dt)
        time.sleep(delay)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append({"kill": k + 1, "checkpointed_epochs": _checkpoint_epoch(ckpt, reads),
                      "delay_s": round(delay, 2), "epoch_s": round(epoch_dt, 2), "landed": alive,
                      "stale_tmp": len(list(cut.rglob("*.tmp")))})
        assert alive, f"kill {k + 1} came after the run finished: {kills}"
        assert not (cut / "metrics.json").exists()
    r = subprocess.run([*ADVML, *RUN, "--out", str(cut), "--resume"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert full.wait(timeout=300) == 0, full.stderr.read() if full.stderr else ""
    assert (cut / "metrics.json").read_bytes() == (tmp_path / "full" / "metrics.json").read_bytes()
    assert (cut / "model.safetensors").read_bytes() == (tmp_path / "full" / "model.safetensors").read_bytes()
    assert not list(cut.rglob("*.tmp"))  # whatever a kill left was cleared by --resume, never read
    assert reads  # the checkpoint was read while runs were being killed, and every read was whole
    print("\nkill/resume:", json.dumps({"kills": kills, "checkpoint_reads": len(reads), "matched": True}))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny finished run (2 epochs) whose checkpoint the tests below damage."""
    out = tmp_path_factory.mktemp("finished") / "run"
    r = CliRunner().invoke(app, ["backdoor", "--out", str(out), *_TINY])
    assert r.exit_code == 0, r.output
    return out


_TINY = ["--train-size", "100", "--test-size", "50", "--epochs", "2", "--seed", "5", "--no-progress"]


def _copy_killed_after_training(src: Path, dst: Path) -> Path:
    """The run folder as a kill after the last checkpoint but before the results leaves it."""
    import shutil

    shutil.copytree(src, dst)
    for name in ("metrics.json", "timing.json", "model.safetensors"):
        (dst / name).unlink()
    return dst


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, -1], ids=["empty", "7-bytes", "header-cut", "half", "last-byte"])
def test_a_damaged_checkpoint_is_refused_never_loaded(finished, tmp_path, keep):
    run = _copy_killed_after_training(finished, tmp_path / "run")
    ckpt = run / "checkpoints" / "last.safetensors"
    data = ckpt.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    ckpt.write_bytes(data[:n])
    r = CliRunner().invoke(app, ["backdoor", "--out", str(run), *_TINY, "--resume"])
    assert r.exit_code == 2, r.output
    assert "last.safetensors: not a readable safetensors file" in r.output, r.output
    assert not (run / "metrics.json").exists() and not (run / "model.safetensors").exists()


def test_temp_files_of_a_killed_writer_are_never_read_and_cleared_on_resume(finished, tmp_path):
    run = _copy_killed_after_training(finished, tmp_path / "run")
    garbage = {run / "checkpoints" / ".last.safetensors.k1ll3d_x.tmp": b"\x00" * 10,
               run / ".metrics.json.ab12cd34.tmp": b'{"clean_acc": 1.0, "asr": 0.0',  # a half-written result
               run / ".config.yaml.zz99_abc.tmp": b"seed: 99\n"}
    for p, b in garbage.items():
        p.write_bytes(b)
    user_file = run / "notes.tmp"  # not a name atomic writes use: left alone
    user_file.write_text("mine")
    r = CliRunner().invoke(app, ["backdoor", "--out", str(run), *_TINY, "--resume"])
    assert r.exit_code == 0, r.output
    assert (run / "metrics.json").read_bytes() == (finished / "metrics.json").read_bytes()
    assert not any(p.exists() for p in garbage) and user_file.read_text() == "mine"


def test_a_writer_killed_mid_write_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"clean_acc": 0.5})
    code = ("import os, signal; from pathlib import Path; from advml.utils.io import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_text('{\"clean_acc\": 0.9, \"asr\"')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT)
    assert r.returncode == -signal.SIGKILL
    assert json.loads(target.read_text()) == {"clean_acc": 0.5}  # the old file, whole
    stale = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(stale) == 1 and re.fullmatch(r"\.metrics\.json\..+\.tmp", stale[0]), stale
    assert [p.name for p in remove_stale_temps(tmp_path)] == stale and [p.name for p in tmp_path.iterdir()] == [
        "metrics.json"]


WRITE = re.compile(r"\.write_text\(|\.write_bytes\(|torch\.save\(|np\.save|save_file\(|json\.dump\(|"
                   r"open\([^)]*['\"][wax]b?\+?['\"]|\.to_csv\(|\.tofile\(")


def test_every_writer_in_the_package_goes_through_the_atomic_helpers():
    """Results, checkpoints and figures are written by utils/io (temp + fsync + rename) or into its temp path."""
    offenders = []
    for path in sorted((ROOT / "advml").rglob("*.py")):
        if path.name == "io.py" and path.parent.name == "utils":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if WRITE.search(line) or ("savefig(" in line and "savefig(tmp" not in line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


KILLED_SPEC = {"name": "killed", "kind": "backdoor", "grid": {"attack.name": ["badnets", "sig", "wanet"],
                                                               "defense.name": ["none"]},
               "presets": {"t": {"settings": {"dataset": "sample", "train_size": 200, "test_size": 60,
                                              "model": "cnn_small", "train": {"epochs": 4, "augment": "standard"}}}},
               "table": {"rows": ["attack.name"], "values": {"clean_acc": "ACC"}}}


@pytest.mark.slow
def test_a_killed_benchmark_grid_reuses_finished_cells_and_resumes_the_cut_one(tmp_path):
    """`advml bench` over three cells killed inside its second cell: on rerun the first cell is not re-run, the
    second resumes from its checkpoint (never back to epoch 1), and every cell's metrics.json equals an
    uninterrupted grid's."""
    from advml.bench import load_spec

    spec_file = tmp_path / "killed.yaml"
    spec_file.write_text(json.dumps(KILLED_SPEC))
    bench = [sys.executable, "-m", "advml", "bench", str(spec_file), "--preset", "t"]
    env = _env()
    full = subprocess.Popen([*bench, "--out", str(tmp_path / "full")], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out = tmp_path / "cut"
    cells = [out / "cells" / c.id for c in load_spec(spec_file).cells("t")]
    ckpt = cells[1] / "checkpoints" / "last.safetensors"
    reads: list[int] = []
    proc = subprocess.Popen([*bench, "--out", str(out)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and _checkpoint_epoch(ckpt, reads) < 2:
        time.sleep(0.03)
    time.sleep(random.Random(7).uniform(0, 0.5))
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive and (cells[0] / "metrics.json").is_file() and not (cells[1] / "metrics.json").exists()
    first = (cells[0] / "metrics.json").stat().st_mtime_ns
    cut_at = _checkpoint_epoch(ckpt, reads)
    seen: list[int] = []
    rerun = subprocess.Popen([*bench, "--out", str(out)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    while rerun.poll() is None:
        if not (cells[1] / "metrics.json").exists():
            seen.append(_checkpoint_epoch(ckpt, reads))
        time.sleep(0.03)
    assert rerun.returncode == 0, rerun.stderr.read() if rerun.stderr else ""
    assert full.wait(timeout=300) == 0
    assert (cells[0] / "metrics.json").stat().st_mtime_ns == first  # the finished cell was not re-run
    assert seen and min(seen) >= cut_at >= 2  # the cut cell went on from its checkpoint, never back to epoch 1
    for cell in cells:
        assert (cell / "metrics.json").read_bytes() == (tmp_path / "full" / cell.relative_to(out) /
                                                        "metrics.json").read_bytes(), cell
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("lost", ["info.json", "model.safetensors"])
def test_a_zoo_entry_cut_before_it_was_complete_is_finished_not_read(tmp_path, monkeypatch, lost):
    """A kill between a zoo entry's two files leaves an unfinished entry: it is completed from the training
    checkpoint (no retraining), never read half-made."""
    import numpy as np
    import torch

    from advml.data import load_dataset
    from advml.evasion.zoo import ZooSettings, entry, zoo_model

    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 10
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    settings = ZooSettings(epochs=1, batch_size=16)
    model, info = zoo_model(data, "cnn_small", settings, progress=False)
    folder = entry(data, "cnn_small", settings)
    ckpt = folder / "checkpoints" / "last.safetensors"
    stamp = ckpt.stat().st_mtime_ns
    (folder / lost).unlink()
    again, info2 = zoo_model(data, "cnn_small", settings, progress=False)
    assert info2 == info and ckpt.stat().st_mtime_ns == stamp  # finished from the checkpoint, not retrained
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert (folder / "info.json").is_file() and (folder / "model.safetensors").is_file()
