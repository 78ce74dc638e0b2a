"""The NIPS'17 adversarial-competition layout: `images.csv` (ImageId, TrueLabel, TargetClass; labels
1-indexed over 1001 classes with 0 = background) plus `images/<ImageId>.png` (or next to the csv)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from torch import Tensor

from advml.data.folders import IMAGENET_MEAN, IMAGENET_STD, FolderImageDataset
from advml.data.registry import DATASETS, DatasetSplits
from advml.errors import DataError
from advml.utils.io import load_text


class Nips17Dataset(FolderImageDataset):
    """The competition images with their (0-indexed ImageNet) true labels and target classes."""

    targets: Tensor


def read_nips17(root: Path, size: int = 299) -> Nips17Dataset:
    """Read images.csv and the PNGs it names; labels become 0-indexed ImageNet classes."""
    csv_path = root / "images.csv"
    if not csv_path.is_file():
        raise DataError(f"nips17: {csv_path} not found (expected images.csv with ImageId, TrueLabel, TargetClass)")
    folder = root / "images" if (root / "images").is_dir() else root
    files, labels, targets = [], [], []
    reader = csv.DictReader(io.StringIO(load_text(csv_path), newline=""))
    missing = {"ImageId", "TrueLabel", "TargetClass"} - set(reader.fieldnames or [])
    if missing:
        raise DataError(f"nips17: {csv_path} lacks columns {sorted(missing)}")
    for row in reader:
        path = folder / f"{row['ImageId']}.png"
        if not path.is_file():
            raise DataError(f"nips17: {path} listed in images.csv is missing")
        try:
            true, target = int(row["TrueLabel"]) - 1, int(row["TargetClass"]) - 1
        except ValueError:
            raise DataError(f"nips17: bad label in row {row}") from None
        if not (0 <= true < 1000 and 0 <= target < 1000):
            raise DataError(f"nips17: labels must be 1..1000, got {row['TrueLabel']}, {row['TargetClass']}")
        files.append(str(path)), labels.append(true), targets.append(target)  # type: ignore[func-returns-value]
    if not files:
        raise DataError(f"nips17: {csv_path} lists no images")
    ds = Nips17Dataset(files, labels, [str(i) for i in range(1000)], size)
    ds.targets = torch.tensor(targets)
    return ds


@DATASETS.register("nips17", "nips17:<root> NIPS'17 ImageNet-compatible images.csv + PNGs (test split only, 299 px)")
def load_nips17(arg: str | None, data_dir: Path | None, *, image_size: int | None = None,
                **_: object) -> DatasetSplits:
    """The NIPS'17 set as both splits (it has no training part): for transfer attacks on ImageNet models."""
    ds = read_nips17(Path(arg or "").expanduser(), image_size or 299)
    return DatasetSplits(f"nips17:{arg}", ds, ds, IMAGENET_MEAN, IMAGENET_STD)
