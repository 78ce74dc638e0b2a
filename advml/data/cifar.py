"""CIFAR-10 and CIFAR-100: torchvision's layouts (read without unpickling code), advml's npz files, download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torchvision

from advml.data.base import TensorImageDataset
from advml.data.formats import read_cifar_binary, read_jpeg_npz, read_xy_npz
from advml.data.registry import DATASETS, DatasetSplits
from advml.errors import DataError
from advml.utils.io import load_restricted_pickle, load_text

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
DECODED_SUBSET_SIZE = 5000  # train images stored decoded in cifar10.npz


def _from_python_pickles(root: Path, train_files: list[str], test_files: list[str], label_key: str,
                         meta_file: str, names_key: str) -> tuple[TensorImageDataset, TensorImageDataset]:
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in _entries(root / meta_file, names_key)[0]]
    out = []
    for files in (train_files, test_files):
        xs, ys = [], []
        for f in files:
            data, labels = _entries(root / f, "data", label_key)
            try:
                xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
            except ValueError as e:
                raise DataError(f"{root / f}: 'data' is not an array of 32x32 RGB images ({e})") from None
            ys.append(np.asarray(labels, dtype=np.int64))
        out.append(TensorImageDataset(np.concatenate(xs), np.concatenate(ys), classes))
    return out[0], out[1]


def _entries(path: Path, *keys: str) -> list[Any]:
    """Entries of a CIFAR python pickle (its keys may be bytes or str)."""
    d = load_restricted_pickle(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict, got {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    missing = [k for k in keys if k not in d]
    if missing:
        raise DataError(f"{path}: no entry {missing[0]!r}")
    return [d[k] for k in keys]


def _cifar10_from(root: Path, train_size: int | None) -> tuple[TensorImageDataset, TensorImageDataset] | None:
    binary = root / "cifar-10-batches-bin"
    if binary.is_dir():
        classes = load_text(binary / "batches.meta.txt").split()
        tr = read_cifar_binary([binary / f"data_batch_{i}.bin" for i in range(1, 6)], 1, 0)
        te = read_cifar_binary([binary / "test_batch.bin"], 1, 0)
        return TensorImageDataset(*tr, classes), TensorImageDataset(*te, classes)
    if (root / "cifar-10-batches-py").is_dir():
        return _from_python_pickles(root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                                    ["test_batch"], "labels", "batches.meta", "label_names")
    decoded, jpeg = root / "cifar10.npz", root / "cifar10_jpeg.npz"
    small = train_size is not None and train_size <= DECODED_SUBSET_SIZE
    if decoded.is_file() and small:
        return read_xy_npz(decoded)
    if jpeg.is_file():
        return read_jpeg_npz(jpeg)
    if decoded.is_file():
        train, test = read_xy_npz(decoded)
        if len(train) < 50_000:  # never train on a subset silently when the full set was asked for
            raise DataError(f"{decoded} holds a {len(train):,}-image train subset, not the 50,000 of CIFAR-10 "
                            f"(train_size={train_size}); add cifar10_jpeg.npz or torchvision's "
                            f"cifar-10-batches-py to {root}, or ask for train_size <= {len(train)}")
        return train, test
    return None


def _cifar100_from(root: Path) -> tuple[TensorImageDataset, TensorImageDataset] | None:
    if (root / "cifar-100-python").is_dir():
        return _from_python_pickles(root / "cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
                                    "fine_label_names")
    if (root / "cifar-100-binary").is_dir():
        b = root / "cifar-100-binary"
        classes = load_text(b / "fine_label_names.txt").split()
        tr, te = read_cifar_binary([b / "train.bin"], 2, 1), read_cifar_binary([b / "test.bin"], 2, 1)
        return TensorImageDataset(*tr, classes), TensorImageDataset(*te, classes)
    if (root / "cifar100.npz").is_file():
        return read_xy_npz(root / "cifar100.npz")
    return None


def _download(cls: type[Any], root: Path) -> None:
    """Fetch and unpack torchvision's archive (MD5-checked); the pickles are then read safely."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)


def _load(name: str, finder, tv_cls: type, data_dir: Path | None, download: bool, hint: str, **kw):
    roots = [data_dir] if data_dir else []
    cache = Path.home() / ".cache" / "advml" / "data"
    roots.append(cache)
    for root in roots:
        if root.is_dir() and (found := finder(root, **kw)) is not None:
            return found
    if download:
        target = data_dir or cache
        try:
            _download(tv_cls, target)
        except Exception as e:  # network failures come in many types (URLError, OSError, RuntimeError)
            raise DataError(f"{name} not found in {' or '.join(map(str, roots))} and download failed "
                            f"({type(e).__name__}); {hint}") from None
        if (found := finder(target, **kw)) is not None:
            return found
    raise DataError(f"{name} not found in {' or '.join(map(str, roots))}; {hint}")


@DATASETS.register("cifar10", "CIFAR-10 (10 classes, 32x32): torchvision layout, cifar10[_jpeg].npz, or download")
def load_cifar10(arg: str | None, data_dir: Path | None, *, download: bool = True, train_size: int | None = None,
                 **_: object) -> DatasetSplits:
    """CIFAR-10 (10 classes, 32x32)."""
    hint = ("put cifar10.npz / cifar10_jpeg.npz or torchvision's cifar-10-batches-py there "
            "(pass --data-dir or set ADVML_DATA_DIR)")
    train, test = _load("CIFAR-10", _cifar10_from, torchvision.datasets.CIFAR10, data_dir, download, hint,
                        train_size=train_size)
    return DatasetSplits("cifar10", train, test, CIFAR10_MEAN, CIFAR10_STD)


@DATASETS.register("cifar100", "CIFAR-100 (100 classes, 32x32): torchvision layout, cifar100.npz, or download")
def load_cifar100(arg: str | None, data_dir: Path | None, *, download: bool = True, **_: object) -> DatasetSplits:
    """CIFAR-100 (100 classes, 32x32)."""
    hint = ("put torchvision's cifar-100-python (or cifar100.npz) there "
            "(pass --data-dir or set ADVML_DATA_DIR)")
    train, test = _load("CIFAR-100", _cifar100_from, torchvision.datasets.CIFAR100, data_dir, download, hint)
    return DatasetSplits("cifar100", train, test, CIFAR100_MEAN, CIFAR100_STD)
