"""Datasets held in `.npz` files: any user file (`npz:<path>`) and the bundled CIFAR-10 sample."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from advml.data.formats import read_jpeg_npz, read_xy_npz
from advml.data.registry import DATASETS, DatasetSplits

SAMPLE_FILE = "cifar10_sample.npz"
SAMPLE10K_FILE = "cifar10_sample10k.npz"


def _stats(ds) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = ds.images.float().div_(255)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3), correction=0).clamp_min(1e-3).tolist())


@DATASETS.register("npz", "npz:<path> holding x_train (N,H,W,C uint8), y_train, x_test, y_test, optional classes")
def load_npz_dataset(arg: str | None, data_dir: Path | None, **_: object) -> DatasetSplits:
    """Any `.npz` with x_train, y_train, x_test, y_test (uint8 NHWC images), read without pickle."""
    train, test = read_xy_npz(Path(arg or "").expanduser())
    mean, std = _stats(train)
    return DatasetSplits(f"npz:{arg}", train, test, mean, std)


def _bundled(name: str, file: str) -> DatasetSplits:
    from advml.data.cifar import CIFAR10_MEAN, CIFAR10_STD

    with resources.as_file(resources.files("advml.data") / "assets" / file) as path:
        train, test = read_jpeg_npz(path)
    return DatasetSplits(name, train, test, CIFAR10_MEAN, CIFAR10_STD)


@DATASETS.register("sample", "bundled CIFAR-10 sample: 2,000 train + 500 test real images, class-balanced")
def load_sample(arg: str | None, data_dir: Path | None, **_: object) -> DatasetSplits:
    """A class-balanced CIFAR-10 sample shipped inside the package (works offline)."""
    return _bundled("sample", SAMPLE_FILE)


@DATASETS.register("sample10k", "bundled CIFAR-10 sample: 10,000 train + 1,000 test real images, class-balanced "
                                "(the demo's)")
def load_sample10k(arg: str | None, data_dir: Path | None, **_: object) -> DatasetSplits:
    """A larger class-balanced CIFAR-10 sample shipped inside the package (3.4 MB of JPEG bytes)."""
    return _bundled("sample10k", SAMPLE10K_FILE)
