"""Every read of weights, arrays and images and every atomic write goes through here.

Nothing is ever unpickled from a file: weights are safetensors (or `torch.load(weights_only=True)`),
arrays are `.npz`/`.npy` read with `allow_pickle=False`, and the CIFAR python pickles are read with an
unpickler that only admits NumPy array reconstruction.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from advml.errors import DataError, UnsafeFileError


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically (sorted keys, indented, NaN-free)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=dict(metadata or {}))


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file: (tensors, metadata)."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:  # one open for tensors and metadata
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load model weights from safetensors, or from a torch file with `weights_only=True`."""
    path = _existing(path)
    if path.suffix == ".safetensors":
        return load_tensors(path)[0]
    if path.suffix in {".pt", ".pth", ".bin", ".ckpt"}:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeFileError(
                f"{path}: refused, it needs code execution to load (weights_only=True): {str(e).splitlines()[0]}"
            ) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: not a readable torch file ({e})") from None
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise DataError(f"{path}: expected a mapping of parameter names to tensors")
        return dict(obj)
    raise UnsafeFileError(f"{path}: unsupported weights format {path.suffix!r}; use .safetensors (or .pt/.pth)")


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load every array of an `.npz` (or one `.npy`) with `allow_pickle=False`."""
    path = _existing(path)
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):  # a .npy file
            return {"arr_0": data}
        with data:
            return {k: data[k] for k in data.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise UnsafeFileError(f"{path}: refused, it holds pickled objects") from None
        raise DataError(f"{path}: not a readable NumPy file ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable NumPy file ({e})") from None


def load_image(path: str | os.PathLike[str], mode: str = "RGB") -> np.ndarray:
    """Read an image file as a uint8 HWC array (HW for mode 'L')."""
    from PIL import Image, UnidentifiedImageError

    path = _existing(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode)).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds NumPy arrays and plain containers (the CIFAR python batches)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def load_restricted_pickle(path: str | os.PathLike[str]) -> Any:
    """Read a pickle that may only contain NumPy arrays, numbers, strings, bytes, lists and dicts."""
    path = _existing(path)
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(f"{path}: refused, {e}") from None
    except (EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path}: corrupt pickle ({e})") from None


def _existing(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return path
