"""Image datasets that yield float [0, 1] CHW tensors and can fetch whole batches at once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from advml.errors import ConfigError, DataError, InputError
from advml.utils.checks import check_labels, check_unit_range


class ImageDataset(Dataset):
    """Base class: `get_batch(index)` returns (float images (B,C,H,W) in [0,1], long labels (B,))."""

    classes: list[str]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def labels(self) -> Tensor:
        """All labels as a long tensor (N,)."""
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.get_batch(torch.zeros(1, dtype=torch.long))[0].shape[1:])  # type: ignore[return-value]

    def get_batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Images and labels at `index` (a 1-D long tensor)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        x, y = self.get_batch(torch.tensor([i % len(self)]))
        return x[0], int(y[0])

    def subset(self, indices: Tensor | Sequence[int]) -> ImageDataset:
        """The images at `indices`, in that order, as a new dataset (no copy of image data)."""
        return SubsetDataset(self, torch.as_tensor(indices, dtype=torch.long))

    def tensors(self, batch_size: int = 4096) -> tuple[Tensor, Tensor]:
        """All images and labels as two tensors (for small datasets and metrics)."""
        idx = torch.arange(len(self))
        parts = [self.get_batch(chunk) for chunk in idx.split(batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def fingerprint(self) -> str:
        """A sha256 of the content (images, labels, class names), computed once per dataset object."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            h = hashlib.sha256(json.dumps([type(self).__name__, self.classes]).encode())
            self._hash_content(h)
            cached = self.__dict__["_fingerprint"] = h.hexdigest()
        return cached

    def _hash_content(self, h: Any) -> None:
        """Feed the content to the hash: by default every image (as uint8) and label, in batches."""
        for chunk in torch.arange(len(self)).split(1024):
            x, y = self.get_batch(chunk)
            h.update(x.mul(255).round_().to(torch.uint8).numpy().tobytes())
            h.update(y.to(torch.int64).numpy().tobytes())


class TensorImageDataset(ImageDataset):
    """In-memory images stored as uint8 (N,C,H,W) (or float in [0,1]) with integer labels."""

    def __init__(self, images: Tensor | np.ndarray, labels: Tensor | np.ndarray, classes: Sequence[str],
                 channels_last: bool = False) -> None:
        images = torch.as_tensor(images)
        if channels_last:
            if images.ndim != 4:
                raise DataError(f"images must be (N,H,W,C), got shape {tuple(images.shape)}")
            images = images.permute(0, 3, 1, 2)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"images must be (N,C,H,W) with 1 or 3 channels, got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise DataError(f"images must be uint8 or float, got {images.dtype}")
        if images.is_floating_point():
            check_unit_range(images, "float images", DataError)
        labels = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels).long().flatten()
        if labels.numel() != images.shape[0]:
            raise DataError(f"{images.shape[0]} images but {labels.numel()} labels")
        check_labels(labels, len(classes), "labels", DataError)
        self.images = images.contiguous()
        self._labels = labels
        self.classes = list(classes)

    @property
    def labels(self) -> Tensor:
        return self._labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def get_batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        x = self.images[index]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        return x, self._labels[index]

    def subset(self, indices: Tensor | Sequence[int]) -> TensorImageDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorImageDataset(self.images[idx], self._labels[idx], self.classes)

    def _hash_content(self, h: Any) -> None:  # the stored bytes, hashed once, without a copy
        h.update(json.dumps([str(self.images.dtype), list(self.images.shape)]).encode())
        h.update(memoryview(self.images.numpy()).cast("B"))  # type: ignore[arg-type]  # numpy: __buffer__ only on 3.12+
        h.update(self._labels.numpy().tobytes())


class SubsetDataset(ImageDataset):
    """A view of another ImageDataset at fixed indices."""

    def __init__(self, base: ImageDataset, indices: Tensor) -> None:
        if indices.numel() and (indices.min() < 0 or indices.max() >= len(base)):
            raise ConfigError(f"subset indices out of range for a dataset of {len(base)} images")
        self.base, self.indices, self.classes = base, indices, base.classes

    @property
    def labels(self) -> Tensor:
        return self.base.labels[self.indices]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.base.image_shape

    def get_batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.base.get_batch(self.indices[index])

    def _hash_content(self, h: Any) -> None:
        h.update(self.base.fingerprint().encode())
        h.update(self.indices.numpy().tobytes())


class TorchDatasetAdapter(ImageDataset):
    """Wraps any map-style torch Dataset of (image, label) pairs; images may be tensors or PIL images."""

    def __init__(self, dataset: Dataset, classes: Sequence[str] | None = None) -> None:
        self.dataset = dataset
        targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]
        self._labels = torch.as_tensor(np.asarray(targets)).long().flatten()
        if classes is None:
            classes = getattr(dataset, "classes", None) or [str(c) for c in range(int(self._labels.max()) + 1)]
        self.classes = list(classes)

    @property
    def labels(self) -> Tensor:
        return self._labels

    def get_batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        xs = [to_image_tensor(self.dataset[int(i)][0]) for i in index]
        return torch.stack(xs), self._labels[index]


def to_image_tensor(img: Any) -> Tensor:
    """A PIL image, uint8 array/tensor or float tensor in [0,1] -> float (C,H,W) tensor in [0,1]."""
    if isinstance(img, Tensor):
        t = img
    else:
        arr = np.asarray(img)
        t = torch.from_numpy(arr.copy())
        if t.ndim == 2:
            t = t[:, :, None]
        t = t.permute(2, 0, 1)
    if t.dtype == torch.uint8:
        return t.float() / 255
    if not t.is_floating_point():
        raise InputError(f"images must be uint8 or float, got {t.dtype}")
    return t.float()


def as_image_dataset(dataset: Dataset | ImageDataset) -> ImageDataset:
    """Return `dataset` itself if it is an ImageDataset, else wrap it."""
    return dataset if isinstance(dataset, ImageDataset) else TorchDatasetAdapter(dataset)


SubsetMode = Literal["stratified", "balanced"]


def _check_size(size: int, n: int) -> None:
    if size <= 0:
        raise ConfigError(f"subset size must be positive, got {size}")
    if size > n:
        raise ConfigError(f"subset of {size} images requested but the data has only {n}")


def _draw(labels: Tensor, per_class: list[int], generator: torch.Generator, kind: str, size: int) -> Tensor:
    """`per_class[c]` seeded random indices of each class c, sorted."""
    chosen = []
    for c, k in enumerate(per_class):
        pool = (labels == c).nonzero().flatten()
        if k > pool.numel():
            raise ConfigError(f"a {kind} subset of {size} needs {k} images of class {c}, the data has {pool.numel()}")
        chosen.append(pool[torch.randperm(pool.numel(), generator=generator)[:k]])
    return torch.cat(chosen).sort().values


def balanced_indices(labels: Tensor, size: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """A seeded, class-balanced random choice of `size` indices (sorted); extra ones go to the first classes."""
    _check_size(size, labels.numel())
    per_class = [size // num_classes + (1 if c < size % num_classes else 0) for c in range(num_classes)]
    return _draw(labels, per_class, generator, "balanced", size)


def stratified_counts(class_counts: Tensor, size: int) -> list[int]:
    """Per-class sizes proportional to `class_counts` that sum to `size` (largest remainder, ties to the first
    classes), with at least one image of every class present; equal counts give balanced_indices' sizes."""
    counts = class_counts.to(torch.float64)
    present = class_counts > 0
    if size < int(present.sum()):
        raise ConfigError(f"a stratified subset of {size} cannot keep all {int(present.sum())} classes; ask for at "
                          f"least {int(present.sum())} images (or subset: balanced)")
    quota = counts * size / counts.sum()
    k = torch.where(present, quota.floor().clamp(min=1), torch.zeros_like(quota))
    rest = size - int(k.sum())
    if rest > 0:  # largest remainder first; a stable sort breaks ties by class index
        k[torch.argsort(-(quota - k), stable=True)[:rest]] += 1
    for _ in range(-rest):  # the forced ones overshot: take back from the class most above its quota
        c = int(torch.argmin(torch.where(k > 1, quota - k, torch.full_like(quota, float("inf")))))
        k[c] -= 1
    return [int(v) for v in k.tolist()]


def stratified_indices(labels: Tensor, size: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """A seeded random choice of `size` indices (sorted) with class counts proportional to the data's, every
    class kept; on class-balanced data the same indices as balanced_indices."""
    _check_size(size, labels.numel())
    per_class = stratified_counts(torch.bincount(labels, minlength=num_classes)[:num_classes], size)
    return _draw(labels, per_class, generator, "stratified", size)


def subset_indices(labels: Tensor, size: int, num_classes: int, generator: torch.Generator,
                   mode: SubsetMode = "stratified") -> Tensor:
    """The subset rule by name: 'stratified' (proportional to the class counts, the default) or 'balanced'."""
    if mode == "balanced":
        return balanced_indices(labels, size, num_classes, generator)
    if mode == "stratified":
        return stratified_indices(labels, size, num_classes, generator)
    raise ConfigError(f"unknown subset rule {mode!r}; valid: stratified, balanced")
