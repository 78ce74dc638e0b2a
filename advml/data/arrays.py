"""Datasets held in `.npz` files: any user file (`npz:<path>`) and the bundled CIFAR-10 sample."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from advml.data.formats import read_jpeg_npz, read_xy_npz
from advml.data.registry import DATASETS, DatasetSplits

SAMPLE_FILE = "cifar10_sample.npz"


def _stats(ds) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = ds.images.float().div_(255)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3), correction=0).clamp_min(1e-3).tolist())


@DATASETS.register("npz", "npz:<path> holding x_train (N,H,W,C uint8), y_train, x_test, y_test, optional classes")
def load_npz_dataset(arg: str | None, data_dir: Path | None, **_: object) -> DatasetSplits:
    """Any `.npz` with x_train, y_train, x_test, y_test (uint8 NHWC images), read without pickle."""
    train, test = read_xy_npz(Path(arg or "").expanduser())
    mean, std = _stats(train)
    return DatasetSplits(f"npz:{arg}", train, test, mean, std)


@DATASETS.register("sample", "bundled CIFAR-10 sample: 2,000 train + 500 test real images, class-balanced")
def load_sample(arg: str | None, data_dir: Path | None, **_: object) -> DatasetSplits:
    """A class-balanced CIFAR-10 sample shipped inside the package (works offline)."""
    from advml.data.cifar import CIFAR10_MEAN, CIFAR10_STD

    with resources.as_file(resources.files("advml.data") / "assets" / SAMPLE_FILE) as path:
        train, test = read_jpeg_npz(path)
    return DatasetSplits("sample", train, test, CIFAR10_MEAN, CIFAR10_STD)
