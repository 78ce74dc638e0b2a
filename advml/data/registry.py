"""The dataset registry: `load_dataset("cifar10", train_size=4000)` -> train and test ImageDatasets."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from advml.data.base import ImageDataset, SubsetMode, subset_indices
from advml.errors import ConfigError, DataError
from advml.registry import Registry

DATA_DIR_ENV = "ADVML_DATA_DIR"


@dataclass
class DatasetSplits:
    """A dataset's train and test splits plus what models need to know about it."""

    name: str
    train: ImageDataset
    test: ImageDataset
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""  # the resolved path of the files read ("" for the bundled sample)

    def fingerprint(self) -> str:
        """A sha256 of what a model trained on these splits depends on: source, statistics, train and test content."""
        return hashlib.sha256(json.dumps([self.source, list(self.mean), list(self.std), self.train.fingerprint(),
                                          self.test.fingerprint()]).encode()).hexdigest()

    @property
    def classes(self) -> list[str]:
        """Class names, index = label."""
        return self.train.classes

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.train.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return self.train.image_shape


# A loader takes (argument after "name:", data directory or None, options) and returns the full splits.
Loader = Callable[..., DatasetSplits]
DATASETS: Registry[Loader] = Registry("dataset")


def default_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """`data_dir` if given, else $ADVML_DATA_DIR, else None."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else None


def bundled_file(path: str | os.PathLike[str]) -> Path | None:
    """The resource shipped in the package under this relative path (e.g. 'triggers/d-st/hello_kitty.png'), or None."""
    p = Path(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    found = resources.files("advml.backdoor").joinpath("assets", *p.parts)
    return Path(str(found)) if found.is_file() else None


def find_file(path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None) -> Path:
    """`path` as given if it exists, else the package's bundled copy (advml/backdoor/assets/<path>), else relative
    to the data folder: the defaults (e.g. 'triggers/d-st/hello_kitty.png') work without any data folder."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    bundled = bundled_file(p)
    if bundled is not None:
        return bundled
    root = default_data_dir(data_dir)
    if root is not None and not p.is_absolute() and (root / p).is_file():
        return root / p
    where = f"{p}" + (f" or {root / p}" if root is not None and not p.is_absolute() else "")
    raise DataError(f"file not found: {where}; pass a path or set {DATA_DIR_ENV} to the folder holding it")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'imagefolder:/data/in100' -> ('imagefolder', '/data/in100'); 'cifar10' -> ('cifar10', None)."""
    name, sep, arg = spec.partition(":")
    return name, (arg if sep else None)


def load_dataset(spec: str, data_dir: str | os.PathLike[str] | None = None, *, train_size: int | None = None,
                 test_size: int | None = None, seed: int = 0, image_size: int | None = None,
                 download: bool = True, subset: SubsetMode = "stratified") -> DatasetSplits:
    """Load a registered dataset and take seeded subsets of the requested sizes: `subset` 'stratified' keeps the
    class proportions (every class kept), 'balanced' takes equal numbers per class."""
    name, arg = parse_spec(spec)
    loader = DATASETS.get(name)
    needs_arg = name in {"imagefolder", "npz", "nips17"}
    if needs_arg and not arg:
        raise ConfigError(f"dataset {name!r} needs a path: use '{name}:<path>'")
    if not needs_arg and arg:
        raise ConfigError(f"dataset {name!r} takes no ':' argument (got {spec!r})")
    splits = loader(arg, default_data_dir(data_dir), image_size=image_size, download=download,
                    train_size=train_size)
    if arg:  # the zoo and run fingerprints name the file read, not the path as typed
        splits.source = str(Path(arg).expanduser().resolve())
    gen = torch.Generator().manual_seed(seed)
    for split, size in (("train", train_size), ("test", test_size)):
        ds: ImageDataset = getattr(splits, split)
        if size is not None and size != len(ds):
            setattr(splits, split, ds.subset(subset_indices(ds.labels, size, ds.num_classes, gen, subset)))
    if len(splits.train) == 0 or len(splits.test) == 0:
        raise ConfigError(f"dataset {spec!r} has an empty split")
    (c, h, w), test_shape = splits.train.image_shape, splits.test.image_shape
    if h != w:  # found here, not as a shape error inside a model after an epoch
        raise DataError(f"dataset {spec!r}: images are {w}x{h} (width x height); advml's models take square images")
    if test_shape != (c, h, w):
        raise DataError(f"dataset {spec!r}: test images are {tuple(test_shape)} but training images {(c, h, w)} "
                        "(channels, height, width); both splits must have one shape")
    if name != "nips17":  # NIPS'17 is an evaluation set of 1,000 ImageNet classes, not a training set
        counts = torch.bincount(splits.train.labels, minlength=splits.num_classes)
        if bool((counts == 0).any()):
            missing = [splits.classes[c] for c in (counts == 0).nonzero().flatten().tolist()]
            raise DataError(f"dataset {spec!r}: {len(missing)} of {splits.num_classes} classes have no training "
                            f"images (e.g. {missing[:3]}); every class must be in the training split")
    return splits
