"""Bad inputs at the boundary: every case names its error class and a fragment of the message, and shows that
nothing was written (no --out folder for the CLI, no file at all for the Python API).

The CLI cases run `advml backdoor|transfer --out <tmp>/run ...` in-process; the error class is recorded where the
CLI turns it into `advml: error: ...` and exit code 2. Data-dependent cases use a tiny `.npz` dataset (instant to
load). `python tests/reliability/test_bad_inputs.py` prints the table of inputs and messages as markdown.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import advml.cli
from advml.errors import AdvmlError, ConfigError, DataError, InputError, UnknownNameError, UnsafeFileError

ROOT = Path(__file__).resolve().parents[2]  # also run as a script: `python tests/reliability/test_bad_inputs.py`

runner = CliRunner()
FAST = ["--epochs", "1", "--no-progress"]


@dataclass
class Case:
    id: str
    input: str  # what the table shows
    run: list[str] | Callable[[Path], Any]  # CLI args (with {tiny}, {f} placeholders) or an API call on the files dir
    error: type[AdvmlError]
    fragment: str  # in the message, with {f} for the files dir


def B(*args: str) -> list[str]:
    return ["backdoor", *FAST, *args]


def T(*args: str) -> list[str]:
    return ["transfer", "--dataset", "npz:{tiny}", "--surrogate", "cnn_small", "--targets", "resnet18_narrow",
            "--iters", "2", "--n-images", "4", *args]


def _trigger(f: Path):
    from advml.backdoor import build_attack

    return build_attack("badnets").trigger_for((3, 32, 32))


def _apply(x: torch.Tensor) -> Callable[[Path], Any]:
    return lambda f: _trigger(f).apply(x)


def _attack_call(labels: torch.Tensor) -> Callable[[Path], Any]:
    def run(f: Path) -> Any:
        from advml.evasion.methods import compose
        from advml.models import build_model

        attack = compose("mi", build_model("cnn_small", 10), eps=8 / 255, step=2 / 255, iters=1)
        return attack(torch.rand(2, 3, 32, 32), labels)

    return run


def _compose(**kw: Any) -> Callable[[Path], Any]:
    def run(f: Path) -> Any:
        from advml.evasion.methods import compose
        from advml.models import build_model

        return compose("mi", build_model("cnn_small", 10), **{"eps": 8 / 255, "step": 2 / 255, "iters": 2, **kw})

    return run


def _dataset(images: torch.Tensor, labels: torch.Tensor) -> Callable[[Path], Any]:
    def run(f: Path) -> Any:
        from advml.data import TensorImageDataset

        return TensorImageDataset(images, labels, ["a", "b"])

    return run


def _stealth(a: torch.Tensor, b: torch.Tensor) -> Callable[[Path], Any]:
    def run(f: Path) -> Any:
        from advml.metrics import stealth

        return stealth(a, b)

    return run


def _load_weights(name: str) -> Callable[[Path], Any]:
    def run(f: Path) -> Any:
        from advml.models import build_model, load_weights

        return load_weights(build_model("cnn_small", 10), f / name)

    return run


def _build_model(name: str, num_classes: int) -> Callable[[Path], Any]:
    def run(f: Path) -> Any:
        from advml.models import build_model

        return build_model(name, num_classes)

    return run


def _load_dataset(spec: str, **kw: Any) -> Callable[[Path], Any]:
    def run(f: Path) -> Any:
        from advml.data import load_dataset

        return load_dataset(spec.format(f=f), **kw)

    return run


NAN = float("nan")
CASES = [
    # --- names (with the registry's closest-name suggestion) ---
    Case("unknown-dataset", "--dataset cifar11", B("--dataset", "cifar11"), UnknownNameError,
         "unknown dataset 'cifar11' (did you mean 'cifar10'?)"),
    Case("unknown-model", "--model resnet19", B("--model", "resnet19"), ConfigError,
         "model: unknown model 'resnet19' (did you mean 'resnet18'?)"),
    Case("unknown-attack", "--attack badnet", B("--attack", "badnet"), ConfigError,
         "unknown attack 'badnet' (did you mean 'badnets'?)"),
    Case("unknown-defense", "--defense d-bx", B("--defense", "d-bx"), ConfigError,
         "unknown defense 'd-bx' (did you mean 'd-br'?)"),
    Case("unknown-preset", "--preset defense_cpuu", B("--preset", "defense_cpuu"), UnknownNameError,
         "unknown preset 'defense_cpuu' (did you mean 'defense_cpu'?)"),
    Case("unknown-mode", "--mode all2some", B("--mode", "all2some"), ConfigError,
         "attack.mode: Input should be 'all2one' or 'all2all'"),
    Case("unknown-transfer-method", "transfer --method mi+rapp", T("--method", "mi+rapp"), ConfigError,
         "did you mean 'rap'"),
    Case("unknown-target-model", "transfer --targets vgg17", T("--targets", "vgg17"), ConfigError,
         "unknown model 'vgg17' (did you mean 'vgg16_bn'?)"),
    Case("unknown-surrogate", "transfer --surrogate resnet_18", T("--surrogate", "resnet_18"), ConfigError,
         "unknown model 'resnet_18' (did you mean 'resnet18'?)"),
    Case("api-unknown-model", "build_model('cnn_smal', 10)", _build_model("cnn_smal", 10), UnknownNameError,
         "did you mean 'cnn_small'"),
    Case("dataset-arg-not-taken", "--dataset sample:x", B("--dataset", "sample:x"), ConfigError,
         "dataset 'sample' takes no ':' argument"),
    Case("dataset-arg-missing", "load_dataset('npz')", _load_dataset("npz"), ConfigError,
         "dataset 'npz' needs a path"),
    # --- settings keys (closest valid key suggested) ---
    Case("unknown-top-key", "--set seeed=1", B("--set", "seeed=1"), ConfigError,
         "unknown setting 'seeed' (did you mean 'seed'?)"),
    Case("unknown-train-key", "--set train.lrr=0.1", B("--set", "train.lrr=0.1"), ConfigError,
         "unknown setting 'train.lrr' (did you mean 'lr'?)"),
    Case("unknown-attack-key", "--set attack.sizee=3", B("--set", "attack.sizee=3"), ConfigError,
         "unknown setting 'attack.sizee' (did you mean 'size'?)"),
    Case("unknown-yaml-key", "--config c.yaml with `trian: {epochs: 1}`", B("--config", "{f}/typo.yaml"),
         ConfigError, "unknown setting 'trian' (did you mean 'train'?)"),
    Case("unknown-zoo-key", "transfer --set zoo.epochz=1", T("--set", "zoo.epochz=1"), ConfigError,
         "unknown setting 'zoo.epochz' (did you mean 'epochs'?)"),
    Case("set-without-value", "--set nokeyvalue", B("--set", "nokeyvalue"), ConfigError, "--set takes KEY=VALUE"),
    Case("config-missing", "--config missing.yaml", B("--config", "{f}/missing.yaml"), DataError,
         "missing.yaml: no such config file"),
    Case("config-not-yaml", "--config with `a: [1`", B("--config", "{f}/broken.yaml"), ConfigError, "not valid YAML"),
    Case("config-not-mapping", "--config holding a list", B("--config", "{f}/list.yaml"), ConfigError,
         "expected a mapping at the top level"),
    # --- ranges ---
    Case("rate-zero", "--rate 0", B("--rate", "0"), ConfigError, "attack.rate: Input should be greater than 0"),
    Case("rate-above-one", "--rate 1.5", B("--rate", "1.5"), ConfigError,
         "attack.rate: Input should be less than or equal to 1"),
    Case("rate-nan", "--rate nan", B("--rate", "nan"), ConfigError, "attack.rate: Input should be"),
    Case("target-negative", "--target -1", B("--target", "-1"), ConfigError,
         "attack.target: Input should be greater than or equal to 0"),
    Case("target-out-of-range", "--target 10 (10 classes)", B("--dataset", "npz:{tiny}", "--target", "10"),
         ConfigError, "target label 10 is outside [0, 10)"),
    Case("epochs-zero", "--epochs 0", ["backdoor", "--no-progress", "--epochs", "0"], ConfigError,
         "train.epochs: Input should be greater than or equal to 1"),
    Case("batch-size-zero", "--batch-size 0", B("--batch-size", "0"), ConfigError,
         "train.batch_size: Input should be greater than or equal to 1"),
    Case("lr-negative", "--lr -1", B("--lr", "-1"), ConfigError, "train.lr: Input should be greater than 0"),
    Case("alpha-above-one", "--attack blend_strip --set attack.alpha=1.5",
         B("--attack", "blend_strip", "--set", "attack.alpha=1.5"), ConfigError,
         "attack.alpha: Input should be less than or equal to 1"),
    Case("model-option-bad", "--model resnet18_narrow --set model_options.width=0",
         B("--dataset", "npz:{tiny}", "--model", "resnet18_narrow", "--set", "model_options.width=0"), ConfigError,
         "width must be a positive integer"),
    Case("device-unknown", "--device tpu9", B("--dataset", "npz:{tiny}", "--device", "tpu9"), ConfigError,
         "invalid device 'tpu9'"),
    Case("eps-negative", "transfer --eps -1", T("--eps", "-1"), ConfigError, "eps: Input should be greater than 0"),
    Case("iters-zero", "transfer --iters 0", T("--iters", "0"), ConfigError,
         "iters: Input should be greater than or equal to 1"),
    Case("n-images-zero", "transfer --n-images 0", T("--n-images", "0"), ConfigError,
         "n_images: Input should be greater than or equal to 1"),
    Case("api-eps-negative", "compose('mi', eps=-1)", _compose(eps=-1), ConfigError, "need 0 < eps <= 1"),
    Case("api-num-classes-one", "build_model('cnn_small', 1)", _build_model("cnn_small", 1), ConfigError,
         "num_classes must be an integer >= 2"),
    # --- output folder ---
    Case("out-is-a-file", "--out an existing file", ["backdoor", "--out", "{f}/a_file"], ConfigError,
         "is an existing file, not a folder"),
    Case("out-holds-a-run", "--out a finished run, no --resume", ["backdoor", "--out", "{f}/a_run"], ConfigError,
         "pass --resume to continue that run"),
    Case("resume-not-a-run", "--resume into a folder of user files (temp-like names too)",
         B("--out", "{f}/user_folder", "--resume"), ConfigError, "holds files but no advml run"),
    Case("overwrite-not-a-run", "--overwrite into a folder of user files",
         B("--out", "{f}/user_folder", "--overwrite"), ConfigError, "holds files but no advml run"),
    Case("transfer-overwrite-not-a-run", "transfer --overwrite into a folder of user files",
         T("--out", "{f}/user_folder", "--overwrite"), ConfigError, "holds files but no advml run"),
    # --- datasets: empty, missing classes, shapes, dtypes, values, files ---
    Case("train-size-too-large", "--train-size 99 (40 images)", B("--dataset", "npz:{tiny}", "--train-size", "99"),
         ConfigError, "subset of 99 images requested but the data has only 40"),
    Case("empty-dataset", "npz with 0 training images", B("--dataset", "npz:{f}/empty.npz"), DataError,
         "x_train holds no images"),
    Case("class-missing-from-train", "npz whose train split lacks class 1",
         B("--dataset", "npz:{f}/no_class1.npz"), DataError, "1 of 2 classes have no training images"),
    Case("class-missing-from-subset", "--train-size 10 --subset balanced of a split lacking class 1",
         B("--dataset", "npz:{f}/no_class1.npz", "--train-size", "10", "--subset", "balanced"), ConfigError,
         "a balanced subset of 10 needs 5 images of class 1, the data has 0"),
    Case("stratified-subset-too-small", "--train-size 1 of a 10-class set",
         B("--dataset", "npz:{tiny}", "--train-size", "1"), ConfigError,
         "a stratified subset of 1 cannot keep all 10 classes"),
    Case("subset-rule-unknown", "--subset random", B("--dataset", "npz:{tiny}", "--subset", "random"), ConfigError,
         "subset"),
    Case("float-images-in-npz", "npz with float32 x_train", B("--dataset", "npz:{f}/float.npz"), DataError,
         "x_train must be uint8 (N,H,W,C)"),
    Case("wrong-image-rank", "npz with (N,H,W) x_train", B("--dataset", "npz:{f}/rank3.npz"), DataError,
         "x_train must be uint8 (N,H,W,C) with C in (1,3), got uint8 (20, 8, 8)"),
    Case("label-count-mismatch", "npz with 19 labels for 20 images", B("--dataset", "npz:{f}/short_y.npz"),
         DataError, "y_train must be an integer vector of length 20"),
    Case("negative-labels", "npz with label -1", B("--dataset", "npz:{f}/neg_y.npz"), DataError,
         "y_train holds negative labels"),
    Case("npz-missing-arrays", "npz without x_test", B("--dataset", "npz:{f}/no_test.npz"), DataError,
         "missing arrays ['x_test', 'y_test']"),
    Case("npz-truncated", "npz cut after 300 bytes", B("--dataset", "npz:{f}/truncated.npz"), DataError,
         "truncated.npz: not a readable NumPy file"),
    Case("npz-not-found", "--dataset npz:nope.npz", B("--dataset", "npz:{f}/nope.npz"), DataError,
         "nope.npz: no such file"),
    Case("npz-plain-text", "--dataset npz:notes.npz (a text file)", B("--dataset", "npz:{f}/notes.npz"),
         UnsafeFileError, "notes.npz: refused, not an .npy/.npz file"),
    Case("npz-object-array", "npz holding an object array", B("--dataset", "npz:{f}/objects.npz"),
         UnsafeFileError, "objects.npz: refused, it holds pickled objects"),
    Case("api-dataset-nan", "TensorImageDataset(float NaN images)",
         _dataset(torch.full((2, 3, 8, 8), NAN), torch.zeros(2, dtype=torch.long)), DataError,
         "float images: NaN values"),
    Case("api-dataset-out-of-range", "TensorImageDataset(float images = 3.0)",
         _dataset(torch.full((2, 3, 8, 8), 3.0), torch.zeros(2, dtype=torch.long)), DataError,
         "float images must lie in [0, 1]"),
    Case("api-dataset-label-range", "TensorImageDataset(labels [0, 5], 2 classes)",
         _dataset(torch.zeros(2, 3, 8, 8), torch.tensor([0, 5])), DataError, "labels must lie in [0, 2), got [0, 5]"),
    # --- triggers: size mismatch, NaN/inf, range, unreadable files ---
    Case("trigger-size-mismatch", "16x16 trigger image for 32x32 data",
         B("--dataset", "npz:{tiny}", "--set", "attack.pattern=file", "--set", "attack.image={f}/t16.png"),
         InputError, "is 16x16 but the data is 32x32"),
    Case("trigger-nan", "trigger .npy holding NaN",
         B("--dataset", "npz:{tiny}", "--set", "attack.pattern=file", "--set", "attack.image={f}/nan.npy"),
         InputError, "trigger pattern: NaN values"),
    Case("trigger-inf", "trigger .npy holding inf",
         B("--dataset", "npz:{tiny}", "--set", "attack.pattern=file", "--set", "attack.image={f}/inf.npy"),
         InputError, "trigger pattern must lie in [0, 1], got values in [inf, inf]"),
    Case("trigger-out-of-range", "trigger .npy of 7.0",
         B("--dataset", "npz:{tiny}", "--set", "attack.pattern=file", "--set", "attack.image={f}/seven.npy"),
         InputError, "trigger pattern must lie in [0, 1]"),
    Case("trigger-unreadable", "trigger .png that is not an image",
         B("--dataset", "npz:{tiny}", "--set", "attack.pattern=file", "--set", "attack.image={f}/garbage.png"),
         DataError, "garbage.png: not a readable image"),
    Case("trigger-blend-nan", "--attack blend_kitty with a NaN image",
         B("--dataset", "npz:{tiny}", "--attack", "blend_kitty", "--set", "attack.image={f}/nan.npy"),
         InputError, "trigger pattern: NaN values"),
    Case("images-nan", "trigger.apply(NaN images)", _apply(torch.full((2, 3, 32, 32), NAN)), InputError,
         "trigger input: NaN values"),
    Case("images-inf", "trigger.apply(inf images)", _apply(torch.full((2, 3, 32, 32), float("inf"))), InputError,
         "trigger input must lie in [0, 1], got values in [inf, inf]"),
    Case("images-uint8", "trigger.apply(uint8 images)", _apply(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
         InputError, "must be float in [0, 1], got dtype torch.uint8"),
    Case("images-3d", "trigger.apply((3,32,32) tensor)", _apply(torch.zeros(3, 32, 32)), InputError,
         "must be (N, C, H, W), got shape (3, 32, 32)"),
    Case("images-wrong-size", "32x32 trigger on 16x16 images", _apply(torch.zeros(2, 3, 16, 16)), InputError,
         "trigger is for images of shape (3, 32, 32), got (3, 16, 16)"),
    Case("images-wrong-channels", "3-channel trigger on 1-channel images", _apply(torch.zeros(2, 1, 32, 32)),
         InputError, "got (1, 32, 32)"),
    Case("stealth-shape-mismatch", "stealth(32x32 vs 16x16)",
         _stealth(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 16, 16)), InputError, "image batches differ in shape"),
    Case("evasion-label-range", "attack(images, labels=[0, 12]) on 10 classes", _attack_call(torch.tensor([0, 12])),
         InputError, "labels must lie in [0, 10), got [0, 12]"),
    Case("evasion-label-count", "attack(2 images, 3 labels)", _attack_call(torch.tensor([0, 1, 2])), InputError,
         "need one integer label per image"),
    # --- shapes found before any training, seeds, figure and table outputs, encodings ---
    Case("images-not-square", "npz with 32x24 images", B("--dataset", "npz:{f}/nonsquare.npz"), DataError,
         "images are 24x32 (width x height); advml's models take square images"),
    Case("test-size-differs", "npz with 16x16 test images, 32x32 train", B("--dataset", "npz:{f}/test16.npz"),
         DataError, "test images are (3, 16, 16) but training images (3, 32, 32)"),
    Case("seed-beyond-64-bits", "--seed 2**70", B("--seed", str(2**70)), ConfigError,
         "seed: Input should be less than or equal to 9223372036854710272"),
    Case("seed-negative", "--seed -1", B("--seed", "-1"), ConfigError,
         "seed: Input should be greater than or equal to 0"),
    Case("transfer-seed-beyond-64-bits", "transfer --seed 2**64", T("--seed", str(2**64)), ConfigError,
         "seed: Input should be less than or equal to"),
    Case("zoo-seed-beyond-64-bits", "transfer --set zoo.seed=2**70", T("--set", f"zoo.seed={2**70}"), ConfigError,
         "zoo.seed: Input should be less than or equal to"),
    Case("triggers-out-extension", "triggers --out fig.txt",
         ["triggers", "--attack", "badnets", "--dataset", "npz:{tiny}", "--out", "{f}/fig.txt"], ConfigError,
         "fig.txt: a figure file must end in .png, .pdf, .svg"),
    Case("triggers-n-negative", "triggers --n -3",
         ["triggers", "--attack", "badnets", "--dataset", "npz:{tiny}", "--n", "-3", "--out", "{f}/fig.png"],
         ConfigError, "--n must be between 1 and 64 images, got -3"),
    Case("triggers-n-beyond-test", "triggers --n 30 (20 test images)",
         ["triggers", "--attack", "badnets", "--dataset", "npz:{tiny}", "--n", "30", "--out", "{f}/fig.png"],
         ConfigError, "--n 30: the test split has only 20 images"),
    Case("triggers-seed-beyond-64-bits", "triggers --seed 2**70",
         ["triggers", "--attack", "badnets", "--dataset", "npz:{tiny}", "--seed", str(2**70), "--out",
          "{f}/fig.png"], ConfigError, "--seed must be an integer in [0, 9223372036854710272]"),
    Case("stealth-n-negative", "stealth --n -3",
         ["stealth", "--dataset", "npz:{tiny}", "--n", "-3", "--out", "{f}/st"], ConfigError,
         "--n must be at least 1 test image, got -3"),
    Case("stealth-out-is-a-file", "stealth --out an existing file",
         ["stealth", "--dataset", "npz:{tiny}", "--out", "{f}/a_file"], ConfigError, "is an existing file"),
    Case("config-not-utf8", "--config in Latin-1", B("--config", "{f}/latin1.yaml"), ConfigError,
         "latin1.yaml: not UTF-8 text (byte 23); save it as UTF-8"),
    Case("spec-not-utf8", "bench spec in Latin-1", ["bench", "{f}/latin1.yaml"], ConfigError, "not UTF-8 text"),
    Case("spec-name-escapes", "bench spec with name ../../x", ["bench", "{f}/escape_spec.yaml"], ConfigError,
         "escape_spec.yaml.name: a spec name must be a plain file name"),
    Case("spec-figure-escapes", "bench spec with table.figures [../../../etc/passwd]",
         ["bench", "{f}/figure_spec.yaml"], ConfigError,
         "figure_spec.yaml.table.figures: a figure must be a plain file name"),
    Case("trigger-npz-named-npy", "--set attack.image=t.npy that is an .npz archive",
         B("--dataset", "npz:{tiny}", "--set", "attack.pattern=file", "--set", "attack.image={f}/archive.npy"),
         DataError, "archive.npy: an .npz archive, not one .npy array"),
    # --- weights (--init-weights, --surrogate-weights, load_weights) ---
    Case("weights-truncated", "--init-weights truncated .safetensors",
         B("--dataset", "npz:{tiny}", "--init-weights", "{f}/truncated.safetensors"), DataError,
         "truncated.safetensors: not a readable safetensors file"),
    Case("weights-other-model", "--init-weights of resnet18_narrow for cnn_small",
         B("--dataset", "npz:{tiny}", "--init-weights", "{f}/r18.safetensors"), DataError,
         "r18.safetensors: weights do not fit this model"),
    Case("weights-nan", "--init-weights holding NaN",
         B("--dataset", "npz:{tiny}", "--init-weights", "{f}/nan.safetensors"), DataError,
         "tensors hold NaN or inf values (e.g."),
    Case("weights-unsupported", "--init-weights w.pkl",
         B("--dataset", "npz:{tiny}", "--init-weights", "{f}/w.pkl"), UnsafeFileError,
         "w.pkl: unsupported weights format '.pkl' (not read)"),
    Case("weights-missing", "--init-weights nope.safetensors",
         B("--dataset", "npz:{tiny}", "--init-weights", "{f}/nope.safetensors"), DataError,
         "nope.safetensors: no such file"),
    Case("weights-torch-garbage", "load_weights(.pt that is not a torch file)", _load_weights("garbage.pt"),
         DataError, "garbage.pt: not a readable torch file"),
    Case("surrogate-weights-missing", "transfer --surrogate-weights nope.safetensors",
         T("--surrogate-weights", "{f}/nope.safetensors"), DataError, "nope.safetensors: no such file"),
    Case("surrogate-weights-truncated", "transfer --surrogate-weights truncated",
         T("--surrogate-weights", "{f}/truncated.safetensors"), DataError, "not a readable safetensors file"),
    Case("surrogate-also-target", "transfer --targets cnn_small (the surrogate)",
         T("--targets", "cnn_small", "--surrogate-weights", "{f}/cnn.safetensors"), ConfigError, "also a target"),
]


def _npz(path: Path, **arrays: np.ndarray) -> None:
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Every bad file the cases name, made once."""
    from PIL import Image

    from advml.models import build_model
    from advml.utils.io import save_tensors

    f = tmp_path_factory.mktemp("bad_files")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y = np.arange(40) % 10
    _npz(f / "tiny.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    small, ys = x[:20, :8, :8], np.arange(20) % 2
    _npz(f / "empty.npz", x_train=small[:0], y_train=ys[:0], x_test=small, y_test=ys)
    _npz(f / "no_class1.npz", x_train=small, y_train=np.zeros(20, np.int64), x_test=small, y_test=ys)
    _npz(f / "float.npz", x_train=small.astype(np.float32), y_train=ys, x_test=small, y_test=ys)
    _npz(f / "rank3.npz", x_train=small[..., 0], y_train=ys, x_test=small, y_test=ys)
    _npz(f / "short_y.npz", x_train=small, y_train=ys[:19], x_test=small, y_test=ys)
    _npz(f / "neg_y.npz", x_train=small, y_train=ys - 1, x_test=small, y_test=ys)
    _npz(f / "no_test.npz", x_train=small, y_train=ys)
    (f / "truncated.npz").write_bytes((f / "tiny.npz").read_bytes()[:300])
    np.savez(f / "objects.npz", x_train=np.array([{"a": 1}], dtype=object))
    (f / "notes.npz").write_text("x_train: some images\n")
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(f / "t16.png")
    np.save(f / "nan.npy", np.full((32, 32, 3), np.nan, np.float32))
    np.save(f / "inf.npy", np.full((32, 32, 3), np.inf, np.float32))
    np.save(f / "seven.npy", np.full((32, 32, 3), 7.0, np.float32))
    (f / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    cnn = build_model("cnn_small", 10).state_dict()
    save_tensors(f / "cnn.safetensors", cnn)
    (f / "truncated.safetensors").write_bytes((f / "cnn.safetensors").read_bytes()[:1000])
    save_tensors(f / "r18.safetensors", build_model("resnet18_narrow", 10).state_dict())
    save_tensors(f / "nan.safetensors", {k: v.float() * NAN if v.is_floating_point() else v for k, v in cnn.items()})
    (f / "w.pkl").write_bytes(pickle.dumps({"w": [1.0]}))
    (f / "garbage.pt").write_bytes(b"PK\x03\x04 this is not a zip archive")
    (f / "typo.yaml").write_text("trian:\n  epochs: 1\n")
    (f / "broken.yaml").write_text("a: [1\n")
    (f / "list.yaml").write_text("- 1\n- 2\n")
    (f / "a_file").write_text("keep me\n")
    _npz(f / "nonsquare.npz", x_train=x[:, :, :24], y_train=y, x_test=x[:20, :, :24], y_test=y[:20])
    _npz(f / "test16.npz", x_train=x, y_train=y, x_test=x[:20, :16, :16], y_test=y[:20])
    (f / "latin1.yaml").write_bytes("train:\n  epochs: 1  # réglé\n".encode("latin-1"))
    spec = "kind: backdoor\ngrid: {attack.name: [badnets]}\npresets: {cpu: {}}\ntable: {rows: [attack.name], " \
           "values: {asr: ASR}%s}\n"
    (f / "escape_spec.yaml").write_text("name: ../../x\n" + spec % "")
    (f / "figure_spec.yaml").write_text("name: t\n" + spec % ", figures: [../../../etc/passwd]")
    np.savez(f / "archive.npz", x=np.zeros((32, 32, 3), np.uint8))
    (f / "archive.npz").rename(f / "archive.npy")
    (f / "a_run").mkdir()
    (f / "a_run" / "metrics.json").write_text("{}\n")
    (f / "a_run" / "config.yaml").write_text("seed: 0\n")
    (f / "user_folder" / "sub").mkdir(parents=True)
    for name in (".notes.txt.ab12cd.tmp", "sub/.draft.md.x1y2z3.tmp", "config.yml", "checkpoints.txt"):
        (f / "user_folder" / name).write_text("mine\n")
    return f


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


class _RecordingExit(typer.Exit):
    """typer.Exit that remembers the advml error being handled when the CLI raised it."""

    seen: list[BaseException | None] = []

    def __init__(self, code: int = 0) -> None:
        super().__init__(code)
        _RecordingExit.seen.append(sys.exc_info()[1])


def test_at_least_25_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 25
    assert len({c.input for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly_and_writes_nothing(case, files, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path / "cache"))  # a zoo model must never be trained here
    monkeypatch.chdir(tmp_path)
    before = _tree(files)
    fragment = case.fragment.format(f=files)
    if callable(case.run):
        with pytest.raises(case.error) as info:
            case.run(files)
        assert fragment in str(info.value)
        assert list(tmp_path.iterdir()) == []
    else:
        out = tmp_path / "run"
        args = [a.format(f=files, tiny=files / "tiny.npz") for a in case.run]
        if "--out" not in args:
            args[1:1] = ["--out", str(out)]
        _RecordingExit.seen.clear()
        monkeypatch.setattr(advml.cli.typer, "Exit", _RecordingExit)
        r = runner.invoke(advml.cli.app, args)
        assert r.exit_code == 2, r.output
        assert r.output.startswith("advml: error: ") and r.output.count("\n") == 1, r.output
        assert fragment in r.output, r.output
        assert len(_RecordingExit.seen) == 1 and type(_RecordingExit.seen[0]) is case.error, _RecordingExit.seen
        assert not out.exists() and not (tmp_path / "cache").exists()
    assert _tree(files) == before  # an existing file or run given as --out is left as it was


def markdown_table() -> str:
    """The cases as a markdown table: input, error class, message (run the API cases to get their message)."""
    rows = ["| # | bad input | error | message (fragment asserted) |", "|---:|---|---|---|"]
    for i, c in enumerate(CASES, 1):
        rows.append(f"| {i} | `{c.input}` | {c.error.__name__} | {c.fragment.format(f='…')} |")
    for j, (carrier, name, via, error, fragment) in enumerate(UNTRUSTED, len(CASES) + 1):
        rows.append(f"| {j} | planted pickle ({carrier}) `{name}` via `{via}` | {error.__name__} | "
                    f"<file>: {fragment}; the planted file is not created |")
    return "\n".join(rows)




# --- untrusted files: a planted pickle never runs, whatever path it comes in by ------------------------------

class _Plant:
    """Unpickling this creates the file `path`: the stand-in for arbitrary code in a downloaded file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(kind: str, path: Path, planted: Path) -> Callable[[], Any]:
    """Write a `kind` file at `path` whose loading by an unsafe reader creates `planted`; return that reader."""
    if kind == "torch.save":
        torch.save({"conv.weight": torch.zeros(1), "x": _Plant(planted)}, path)
        return lambda: torch.load(path, weights_only=False)
    if kind == "raw pickle":
        path.write_bytes(pickle.dumps({"conv.weight": _Plant(planted)}))
        return lambda: pickle.loads(path.read_bytes())
    if kind == "npy object array":
        np.save(path, np.array([_Plant(planted)], dtype=object), allow_pickle=True)
        return lambda: np.load(path, allow_pickle=True)
    if kind == "npz object array":
        np.savez(path, x_train=np.array([_Plant(planted)], dtype=object), y_train=np.zeros(1))
        return lambda: np.load(path, allow_pickle=True)["x_train"]
    raise AssertionError(kind)


UNTRUSTED = [
    # (carrier, file name, how it is loaded, error, message fragment)
    ("torch.save", "evil.pt", "load_weights", UnsafeFileError, "refused, loading it would run code"),
    ("raw pickle", "evil.pth", "load_weights", UnsafeFileError, "refused, loading it would run code"),
    ("raw pickle", "evil.pkl", "load_weights", UnsafeFileError, "unsupported weights format '.pkl' (not read)"),
    ("raw pickle", "evil.safetensors", "load_weights", DataError, "not a readable safetensors file"),
    ("npy object array", "evil.npy", "load_weights", UnsafeFileError, "unsupported weights format '.npy'"),
    ("torch.save", "evil.pt", "--init-weights", UnsafeFileError, "refused, loading it would run code"),
    ("raw pickle", "evil.safetensors", "--init-weights", DataError, "not a readable safetensors file"),
    ("torch.save", "evil.pt", "--surrogate-weights", UnsafeFileError, "refused, loading it would run code"),
    ("npy object array", "evil.npy", "--surrogate-weights", UnsafeFileError, "unsupported weights format"),
    ("npz object array", "evil.npz", "--dataset npz:", UnsafeFileError, "refused, it holds pickled objects"),
    ("npy object array", "evil.npy", "--set attack.image=", UnsafeFileError, "refused, it holds pickled objects"),
    ("raw pickle", "evil.npz", "--dataset npz:", UnsafeFileError, "refused, not an .npy/.npz file"),
    ("raw pickle", "evil.npy", "--set attack.image=", UnsafeFileError, "refused, not an .npy/.npz file"),
]


@pytest.mark.parametrize("carrier, name, via, error, fragment", UNTRUSTED,
                         ids=[f"{c}-{n}-{v}" for c, n, v, *_ in UNTRUSTED])
def test_a_planted_pickle_never_runs(carrier, name, via, error, fragment, files, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path / "cache"))
    planted, evil = tmp_path / "PWNED", tmp_path / name
    unsafe_reader = _plant(carrier, evil, planted)
    unsafe_reader()  # control: the plant is live, an unpickling reader does create the file
    assert planted.exists()
    planted.unlink()
    out = tmp_path / "run"
    if via == "load_weights":
        from advml.models import build_model, load_weights

        with pytest.raises(error) as info:
            load_weights(build_model("cnn_small", 10), evil)
        message = str(info.value)
    else:
        tiny = str(files / "tiny.npz")
        args = {"--init-weights": B("--dataset", f"npz:{tiny}", "--init-weights", str(evil)),
                "--surrogate-weights": [a.format(tiny=tiny) for a in T("--surrogate-weights", str(evil))],
                "--dataset npz:": B("--dataset", f"npz:{evil}"),
                "--set attack.image=": B("--dataset", f"npz:{tiny}", "--set", "attack.pattern=file", "--set",
                                         f"attack.image={evil}")}[via]
        _RecordingExit.seen.clear()
        monkeypatch.setattr(advml.cli.typer, "Exit", _RecordingExit)
        r = runner.invoke(advml.cli.app, [args[0], "--out", str(out), *args[1:]])
        assert r.exit_code == 2 and type(_RecordingExit.seen[0]) is error, r.output
        message = r.output
    assert str(evil) in message and fragment in message, message
    assert not planted.exists()
    assert not out.exists() and not (tmp_path / "cache").exists()


LOADERS = re.compile(r"torch\.load\(|np\.load\(|numpy\.load\(|pickle\.loads?\(|Unpickler\(|Image\.open\(|"
                    r"safe_open\(|load_file\(|np\.fromfile\(|(?<![\w.])open\(")


def test_every_load_of_weights_data_and_triggers_goes_through_utils_io():
    """No module but advml/utils/io.py opens weights, checkpoints, arrays, images or data files itself."""
    root = ROOT / "advml"
    offenders = [f"{p.relative_to(root)}:{i}: {line.strip()}"
                 for p in sorted(root.rglob("*.py")) if p != root / "utils" / "io.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if LOADERS.search(line.split("#")[0]) and not line.lstrip().startswith(("import", "from"))]
    assert not offenders, "\n".join(offenders)


def test_a_diverging_run_stops_with_one_line_and_writes_no_results(files, tmp_path):
    """Not a boundary check (the lr is valid, the run diverges): a clean NumericalError, no metrics.json."""
    out = tmp_path / "run"
    r = runner.invoke(advml.cli.app, ["backdoor", "--out", str(out), "--no-progress", "--epochs", "2",
                                      "--batch-size", "8", "--dataset", f"npz:{files / 'tiny.npz'}", "--lr", "1e12",
                                      "--set", "train.momentum=0"])
    assert r.exit_code == 2 and r.output.startswith("advml: error: loss became") and "lower the lr" in r.output, \
        r.output
    assert not (out / "metrics.json").exists() and not (out / "model.safetensors").exists()


if __name__ == "__main__":
    print(markdown_table())


# --- crafted results tables and cell files, full disks, read-only and locked outputs, Ctrl-C ------------------

def _results(folder: Path) -> Path:
    """A valid results.sqlite of a one-cell bench (as `advml bench` writes it)."""
    from advml.bench.store import ResultStore

    folder.mkdir(parents=True, exist_ok=True)
    store = ResultStore(folder / "results.sqlite")
    store.set_meta("spec", {"name": "t", "kind": "transfer", "grid": {"method": ["mi", "mi+rap"]},
                            "presets": {"cpu": {}}, "table": {"rows": ["method"], "values": {"white_box": "wb"}}})
    store.set_meta("preset", "cpu")
    for method, outcomes in (("mi", "0110"), ("mi+rap", "0111")):
        store.add(f"c-{method}", {"method": method}, {}, {"white_box": 0.5, "outcomes": {"white_box": outcomes},
                                                          "image_ids": [1, 2, 3, 4]}, 1.0,
                  {"success.png": b"\x89PNG\r\n\x1a\n"}, "v")
    store.close()
    return folder / "results.sqlite"


def _sql(*statements: str):
    def run(db: Path) -> None:
        con = sqlite3.connect(db)
        with con:
            for st in statements:
                con.execute(st)
        con.close()

    return run


CRAFTED = {
    "garbage": (lambda db: db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8), "results.sqlite"),
    "other-schema": (lambda db: (db.unlink(), _sql("CREATE TABLE cells (id TEXT)")(db)), "no such table: meta"),
    "other-columns": (_sql("DROP TABLE cells", "CREATE TABLE cells (id TEXT)"), "no such column"),
    "spec-not-json": (_sql("UPDATE meta SET value = '{' WHERE key = 'spec'"), "meta 'spec' is not JSON"),
    "spec-invalid": (_sql("""UPDATE meta SET value = '{"name": "t"}' WHERE key = 'spec'"""),
                     "spec.kind: Field required"),
    "preset-not-text": (_sql("UPDATE meta SET value = '[1]' WHERE key = 'preset'"), "spec or preset is not one"),
    "preset-unknown": (_sql("""UPDATE meta SET value = '"gpu"' WHERE key = 'preset'"""), "has no preset 'gpu'"),
    "params-not-mapping": (_sql("UPDATE cells SET params = '[1]'"), "a field of the wrong type"),
    "params-unhashable": (_sql("""UPDATE cells SET params = '{"method": [1]}'"""), "a field of the wrong type"),
    "metrics-not-json": (_sql("UPDATE cells SET metrics = 'nan{'"), "metrics is not JSON"),
    "seconds-text": (_sql("UPDATE cells SET seconds = 'soon'"), "a field of the wrong type"),
    "version-blob": (_sql("UPDATE cells SET code_version = x'00ff'"), "a field of the wrong type"),
    "figure-text": (_sql("UPDATE figures SET png = 'not bytes'"), "is not PNG bytes"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_a_crafted_results_table_fails_report_cleanly(tmp_path, name):
    db = _results(tmp_path / "bench")
    craft, fragment = CRAFTED[name]
    craft(db)
    r = runner.invoke(advml.cli.app, ["report", str(tmp_path / "bench")])
    assert r.exit_code == 2 and r.output.startswith("advml: error: ") and r.output.count("\n") == 1, r.output
    assert fragment in r.output, r.output
    assert not (tmp_path / "bench" / "report.md").exists()


def test_crafted_outcomes_are_left_out_of_the_paired_table_not_a_crash(tmp_path):
    db = _results(tmp_path / "bench")
    r = runner.invoke(advml.cli.app, ["report", str(tmp_path / "bench")])
    assert r.exit_code == 0 and "paired differences" in r.output, r.output
    _sql("""UPDATE cells SET metrics = '{"white_box": 1, "outcomes": {"white_box": "01x"}, "image_ids": [1]}'""")(db)
    r = runner.invoke(advml.cli.app, ["report", str(tmp_path / "bench")])
    assert r.exit_code == 0 and "paired differences" not in r.output, r.output


@pytest.mark.parametrize("metrics, timing, fragment", [
    ("[1, 2]", None, "metrics.json or timing.json is not what a run writes"),
    ('{"clean_acc": 0.5', None, "metrics.json: not a readable JSON file"),
    ('{"clean_acc": 0.5}', '{"seconds": "long"}', "metrics.json or timing.json is not what a run writes"),
    ('{"clean_acc": 0.5}', "\xff", "timing.json: not a readable JSON file"),
])
def test_a_crafted_cell_file_is_refused_when_recorded(tmp_path, metrics, timing, fragment):
    from advml.bench.runner import _record
    from advml.bench.spec import Cell
    from advml.bench.store import ResultStore

    cell = tmp_path / "cells" / "c"
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text(metrics)
    if timing is not None:
        (cell / "timing.json").write_bytes(timing.encode("latin-1"))
    store = ResultStore(tmp_path / "results.sqlite")
    try:
        with pytest.raises(DataError, match=re.escape(fragment)):
            _record(store, Cell({"a": 1}), cell, [], "v")
        assert store.ids() == set()
    finally:
        store.close()


def test_a_results_table_locked_mid_bench_is_one_line_not_a_hang(tmp_path, monkeypatch):
    from advml.bench import store as store_module
    from advml.errors import OutputError

    monkeypatch.setattr(store_module, "LOCK_TIMEOUT", 0.2)
    db = _results(tmp_path / "bench")
    holder = sqlite3.connect(db)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store = store_module.ResultStore(db, create=False)
        with pytest.raises(OutputError, match="cannot write the results table .*another process holds it locked"):
            store.add("c", {}, {}, {}, 1.0, {}, "v")
    finally:
        holder.rollback()
        holder.close()


@pytest.mark.parametrize("where, err, fragment", [
    ("advml.utils.io.os.fsync", errno.ENOSPC, "cannot write (No space left on device)"),
    ("advml.utils.rundir.os.open", errno.EROFS, "cannot write there (Read-only file system)"),
    ("advml.utils.io.tempfile.mkstemp", errno.EACCES, "cannot write (Permission denied)"),
])
def test_a_full_disk_or_read_only_out_is_one_line(files, tmp_path, monkeypatch, where, err, fragment):
    import advml.experiments  # noqa: F401  (imported before the patch: it only breaks writes)

    def fail(*a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(where, fail)
    r = runner.invoke(advml.cli.app, ["backdoor", "--out", str(tmp_path / "run"), *FAST, "--dataset",
                                      f"npz:{files / 'tiny.npz'}"])
    monkeypatch.undo()
    assert r.exit_code == 2 and r.output.startswith("advml: error: ") and r.output.count("\n") == 1, r.output
    assert fragment in r.output, r.output
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_ctrl_c_says_how_to_resume_and_the_resumed_run_counts_both_processes(tmp_path):
    import json
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "advml", "backdoor", "--out", str(out), "--train-size", "200", "--test-size", "50",
           "--epochs", "40", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # a shell's background job (nohup, `&`) starts with SIGINT ignored and a child inherits that: restore the default
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last.safetensors").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    # advml's stage notes come first on stderr (one "advml: ..." line each); the interruption is one line, no traceback
    assert err.splitlines()[-1] == "advml: interrupted; rerun the same command with --resume to continue from the " \
        "last checkpoint" and "Traceback" not in err
    before = json.loads((out / ".advml-run.json").read_text())["seconds"]
    assert before > 0 and not (out / "metrics.json").exists()
    r = subprocess.run(cmd[:-3] + ["--epochs", "2", "--no-progress", "--resume"], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "train.epochs (40 -> 2)" in r.stderr  # the resume is checked, then:
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "timing.json").read_text())["seconds"] > before
