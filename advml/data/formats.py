"""Readers for the on-disk formats: advml's `.npz` layouts, concatenated JPEG blobs, CIFAR binaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advml.data.base import TensorImageDataset
from advml.errors import DataError
from advml.utils.io import MAX_ARRAY_BYTES, decode_image, load_bytes, load_npz


def decode_jpeg_blob(blob: np.ndarray, offsets: np.ndarray, source: str = "") -> np.ndarray:
    """Decode concatenated JPEG files (image i = blob[offsets[i]:offsets[i+1]]) to uint8 (N,H,W,3)."""
    if blob.dtype != np.uint8 or blob.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise DataError(f"{source}: expected a uint8 byte vector and integer offsets, got {blob.dtype} "
                        f"{tuple(blob.shape)} and {offsets.dtype}")
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] < 0 or offsets[-1] > len(blob) \
            or np.any(np.diff(offsets) <= 0):
        raise DataError(f"{source}: inconsistent JPEG offsets")
    out = None
    for i in range(len(offsets) - 1):  # decoding is per file by nature; runs once at load time
        im = decode_image(blob[offsets[i]:offsets[i + 1]].tobytes(), f"{source}: image {i}")
        if out is None:
            total = (len(offsets) - 1) * im.size
            if total > MAX_ARRAY_BYTES:  # bounded before the images are allocated
                raise DataError(f"{source}: {len(offsets) - 1} images of {im.shape} would take "
                                f"{total / 2**30:.1f} GiB decoded (more than ADVML_MAX_ARRAY_BYTES)")
            out = np.empty((len(offsets) - 1, *im.shape), dtype=np.uint8)
        if im.shape != out.shape[1:]:
            raise DataError(f"{source}: image {i} has shape {im.shape}, expected {out.shape[1:]}")
        out[i] = im
    return out if out is not None else np.empty((0, 32, 32, 3), dtype=np.uint8)


def _classes(path: Path, arrays: dict[str, np.ndarray], labels: list[np.ndarray]) -> list[str]:
    if "classes" in arrays:
        if arrays["classes"].ndim != 1:
            raise DataError(f"{path}: classes must be a vector of names, got shape {arrays['classes'].shape}")
        return [str(c) for c in arrays["classes"].tolist()]
    k = max(int(y.max()) + 1 for y in labels if y.size)
    if k > len(labels[0]):  # bounded before a name is made per class: every class needs a training image
        raise DataError(f"{path}: labels go up to {k - 1} but there are only {len(labels[0])} training images "
                        "(every class needs one); give a `classes` array or fix the labels")
    return [str(c) for c in range(k)]


def _check_xy(path: Path, x: np.ndarray, y: np.ndarray, split: str) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{path}: x_{split} must be uint8 (N,H,W,C) with C in (1,3), "
                        f"got {x.dtype} {tuple(x.shape)}")
    if len(x) == 0:
        raise DataError(f"{path}: x_{split} holds no images")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y_{split} must be an integer vector of length {len(x)}, "
                        f"got {y.dtype} {tuple(y.shape)}")


def read_xy_npz(path: Path) -> tuple[TensorImageDataset, TensorImageDataset]:
    """The generic layout: x_train (N,H,W,C) uint8, y_train, x_test, y_test, optional classes."""
    arrays = load_npz(path, ["x_train", "y_train", "x_test", "y_test", "classes"])
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays)
    if missing:
        raise DataError(f"{path}: missing arrays {sorted(missing)} (has {sorted(arrays)})")
    for split in ("train", "test"):
        _check_xy(path, arrays[f"x_{split}"], arrays[f"y_{split}"], split)
        if arrays[f"y_{split}"].min() < 0:
            raise DataError(f"{path}: y_{split} holds negative labels")
    classes = _classes(path, arrays, [arrays["y_train"], arrays["y_test"]])
    return tuple(  # type: ignore[return-value]
        TensorImageDataset(arrays[f"x_{s}"], arrays[f"y_{s}"].astype(np.int64), classes, channels_last=True)
        for s in ("train", "test"))


def read_jpeg_npz(path: Path) -> tuple[TensorImageDataset, TensorImageDataset]:
    """The JPEG layout: jpeg_<split> bytes + offsets_<split> + y_<split>, optional classes."""
    arrays = load_npz(path, [f"{k}_{s}" for s in ("train", "test") for k in ("jpeg", "offsets", "y")] + ["classes"])
    out = []
    for split in ("train", "test"):
        keys = {f"jpeg_{split}", f"offsets_{split}", f"y_{split}"}
        if not keys <= set(arrays):
            raise DataError(f"{path}: missing arrays {sorted(keys - set(arrays))}")
        x = decode_jpeg_blob(arrays[f"jpeg_{split}"], arrays[f"offsets_{split}"], str(path))
        _check_xy(path, x, arrays[f"y_{split}"], split)
        if arrays[f"y_{split}"].min() < 0:
            raise DataError(f"{path}: y_{split} holds negative labels")
        out.append((x, arrays[f"y_{split}"].astype(np.int64)))
    classes = _classes(path, arrays, [y for _, y in out])
    return tuple(TensorImageDataset(x, y, classes, channels_last=True) for x, y in out)  # type: ignore[return-value]


def read_cifar_binary(files: list[Path], label_bytes: int, label_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's binary version: records of label byte(s) + 3072 bytes of CHW pixels."""
    rec = label_bytes + 3072
    chunks = []
    for f in files:
        raw = load_bytes(f)
        if raw.size % rec:
            raise DataError(f"{f}: size {raw.size} is not a multiple of the {rec}-byte record")
        chunks.append(raw.reshape(-1, rec))
    data = np.concatenate(chunks)
    return data[:, label_bytes:].reshape(-1, 3, 32, 32), data[:, label_offset].astype(np.int64)
