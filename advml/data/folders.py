"""GTSRB and ImageNet-style image folders, any image size, resized to one size per dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from advml.data.base import ImageDataset, TensorImageDataset
from advml.data.registry import DATASETS, DatasetSplits
from advml.errors import DataError
from advml.utils.io import load_image

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GTSRB_MEAN, GTSRB_STD = (0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669)


def _read_resized(path: str, size: int) -> Tensor:
    """One image file -> uint8 (3,size,size): resize the shorter side to `size`, then centre-crop."""
    t = torch.from_numpy(load_image(path)).permute(2, 0, 1)
    return TF.center_crop(TF.resize(t, [size], antialias=True), [size, size])


class FolderImageDataset(ImageDataset):
    """Images read from files on demand (for sets too large for memory), resized to `size` x `size`."""

    def __init__(self, files: list[str], labels: list[int], classes: list[str], size: int) -> None:
        self.files, self._labels, self.classes, self.size = files, torch.tensor(labels).long(), classes, size

    @property
    def labels(self) -> Tensor:
        return self._labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def get_batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.stack([_read_resized(self.files[int(i)], self.size) for i in index])
        return x.float().div_(255), self._labels[index]

    def _hash_content(self, h: Any) -> None:
        """Each file's resolved path, size and modification time (not its bytes: folder sets can be huge)."""
        for f in self.files:
            st = os.stat(f)
            h.update(f"{os.path.realpath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        h.update(self._labels.numpy().tobytes() + str(self.size).encode())


def scan_image_folder(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """`folder/<class>/**/<image>` -> (files, labels, classes), in torchvision's ImageFolder order. Each file is
    taken once (by its real path); a linked folder is entered at most once per class, so link loops end; a file
    reachable from two classes (through a link) is an error, never a second, wrong label."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    try:
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError as e:
        raise DataError(f"imagefolder: {folder}: {e.strerror or e}") from None
    if not classes:
        raise DataError(f"imagefolder: {folder} holds no class folders")
    owner: dict[str, str] = {}
    found: list[tuple[str, str, int]] = []  # (folder as walked, file name, label)
    for label, cls in enumerate(classes):
        seen: set[tuple[int, int]] = set()
        stack, count = [str(folder / cls)], 0
        while stack:
            d = stack.pop()
            try:
                st = os.stat(d)
                if (st.st_dev, st.st_ino) in seen:  # a link back to a folder of this class already walked
                    continue
                seen.add((st.st_dev, st.st_ino))
                entries = list(os.scandir(d))
            except OSError as e:
                raise DataError(f"imagefolder: {d}: {e.strerror or e}") from None
            for e in entries:
                if e.is_dir():
                    stack.append(e.path)
                elif e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS):
                    real = os.path.realpath(e.path)
                    if owner.get(real, cls) != cls:
                        raise DataError(f"imagefolder: {e.path} is also in class {owner[real]!r} (through a link); "
                                        "each image must belong to one class")
                    if real not in owner:
                        owner[real] = cls
                        found.append((d, e.name, label))
                        count += 1
        if count == 0:
            raise DataError(f"imagefolder: class folder {folder / cls} holds no images ({', '.join(IMG_EXTENSIONS)})")
    found.sort()  # as sorted(os.walk(...)) then sorted(file names)
    found.sort(key=lambda t: t[2])
    return [os.path.join(d, n) for d, n, _ in found], [y for _, _, y in found], classes


@DATASETS.register("imagefolder", "ImageNet-style imagefolder:<root> with train/<class>/* and val/<class>/*")
def load_imagefolder(arg: str | None, data_dir: Path | None, *, image_size: int | None = None,
                     **_: object) -> DatasetSplits:
    """ImageNet-style folders `<root>/train/<class>/*` and `<root>/val/<class>/*` (any size, resized)."""
    root = Path(arg or "").expanduser()
    splits = []
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"imagefolder: {root / split} is not a directory (expected <root>/train and <root>/val)")
        splits.append(scan_image_folder(root / split))
    (_, _, train_classes), (_, _, val_classes) = splits
    if val_classes != train_classes:
        raise DataError(f"imagefolder: train and val of {root} have different class folders")
    size = image_size or 224
    train, val = (FolderImageDataset(files, labels, classes, size) for files, labels, classes in splits)
    return DatasetSplits(f"imagefolder:{root}", train, val, IMAGENET_MEAN, IMAGENET_STD)


@DATASETS.register("gtsrb", "GTSRB traffic signs (43 classes), torchvision layout or download; resized to 32x32")
def load_gtsrb(arg: str | None, data_dir: Path | None, *, image_size: int | None = None, download: bool = True,
               **_: object) -> DatasetSplits:
    """GTSRB (43 classes), read in torchvision's layout and resized to 32x32 (or `image_size`) in memory."""
    root = data_dir or Path.home() / ".cache" / "advml" / "data"
    size = image_size or 32
    out = []
    for split in ("train", "test"):
        try:
            ds = torchvision.datasets.GTSRB(str(root), split=split, download=False)
        except RuntimeError:
            if not download:
                raise DataError(f"GTSRB not found in {root}; put torchvision's gtsrb/ folder there "
                                "(pass --data-dir or set ADVML_DATA_DIR)") from None
            try:
                ds = torchvision.datasets.GTSRB(str(root), split=split, download=True)
            except Exception as e:  # network errors come in many types
                raise DataError(f"GTSRB not found in {root} and download failed ({type(e).__name__}); "
                                "put torchvision's gtsrb/ folder there") from None
        x = torch.stack([_read_resized(str(p), size) for p, _ in ds._samples])
        y = np.array([t for _, t in ds._samples])
        out.append(TensorImageDataset(x, y, [str(c) for c in range(43)]))
    return DatasetSplits("gtsrb", out[0], out[1], GTSRB_MEAN, GTSRB_STD)
