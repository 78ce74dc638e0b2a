"""Every read of weights, checkpoints, arrays, images and JSON, and every atomic write, goes through here.

Nothing is ever unpickled from a file: weights are safetensors (or `torch.load(weights_only=True)`),
arrays are `.npz`/`.npy` read with `allow_pickle=False`, images go through PIL, and the CIFAR python
pickles are read with an unpickler that only admits NumPy array reconstruction. Anything else is refused
with an `UnsafeFileError` (or a `DataError` for an unreadable file) that names the file.

Writes are atomic: a temporary file beside the target, fsync, then rename. A process killed mid-write
leaves at most a `.<name>.*.tmp` file, which no reader opens (`remove_stale_temps` clears those of advml's own
file names on resume). A write that fails (disk full, read-only folder) is an `OutputError` naming the file.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from advml.errors import DataError, OutputError, UnsafeFileError


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`. A failed write (disk
    full, read-only or foreign folder) is an OutputError naming `path`; the old file is left as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
        except OSError as e:
            raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_TEMP_NAME = re.compile(r"^\.(.+)\.[A-Za-z0-9_]+\.tmp$")  # what atomic_path's mkstemp creates


def temp_target(name: str) -> str | None:
    """The file an atomic-write temp file named `name` was to become, None if `name` is not such a temp name."""
    m = _TEMP_NAME.match(name)
    return m.group(1) if m else None


def remove_stale_temps(folder: str | os.PathLike[str], owned: Callable[[str], bool] = lambda name: True) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left directly in `folder` (not below it), when
    the file they were to become is `owned`; return them."""
    folder = Path(folder)
    stale = [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()
             and (t := temp_target(p.name)) is not None and owned(t)] if folder.is_dir() else []
    for p in stale:
        p.unlink()
    return stale


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
    except Exception as e:  # SafetensorError, OSError, ValueError, ...: the file is damaged, whatever the parser says
        raise DataError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load model weights from safetensors, or from a torch file with `weights_only=True`."""
    path = _existing(path)
    if path.suffix == ".safetensors":
        return _finite(path, load_tensors(path)[0])
    if path.suffix in {".pt", ".pth", ".bin", ".ckpt"}:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            what = next((line.strip() for line in str(e).splitlines() if line.strip().startswith("Unsupported")), "")
            raise UnsafeFileError(
                f"{path}: refused, loading it would run code from the file (read with weights_only=True"
                + (f"; {what}" if what else "") + "); save the weights as .safetensors") from None
        except Exception as e:  # RuntimeError, EOFError, BadZipFile...: a damaged or foreign file
            raise DataError(f"{path}: not a readable torch file ({str(e).splitlines()[0] if str(e) else e!r})") \
                from None
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise DataError(f"{path}: expected a mapping of parameter names to tensors")
        return _finite(path, dict(obj))
    raise UnsafeFileError(f"{path}: unsupported weights format {path.suffix!r} (not read); use .safetensors "
                          "(or a .pt/.pth file, read with weights_only=True)")


def _finite(path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise DataError(f"{path}: {len(bad)} tensors hold NaN or inf values (e.g. {bad[0]!r})")
    return state


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
        if "contains pickled" in str(e) or "containing pickled" in str(e):  # neither .npy nor .npz
            raise UnsafeFileError(f"{path}: refused, not an .npy/.npz file (reading it would mean unpickling "
                                  "it)") from None
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise UnsafeFileError(f"{path}: refused, it holds pickled objects") from None
        raise DataError(f"{path}: not a readable NumPy file ({e})") from None
    except Exception as e:  # whatever the zip and .npy parsers raise on damaged bytes (BadZipFile, EOFError,
        # NotImplementedError for a corrupt zip version, zlib.error, MemoryError for a corrupt shape, ...)
        raise DataError(f"{path}: not a readable NumPy file ({type(e).__name__}: {e})") from None


def load_image(path: str | os.PathLike[str], mode: str = "RGB") -> np.ndarray:
    """Read an image file as a uint8 HWC array (HW for mode 'L')."""
    path = _existing(path)
    return _decode(path, str(path), mode)


def decode_image(data: bytes, source: str, mode: str = "RGB") -> np.ndarray:
    """Decode an image file's bytes (e.g. one JPEG of a blob) as a uint8 HWC array; `source` names it in errors."""
    return _decode(io.BytesIO(data), source, mode)


def _decode(file: Any, source: str, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            return np.asarray(im.convert(mode)).copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{source}: not a readable image ({e})") from None
    except Exception as e:  # PIL's decoders raise SyntaxError, struct.error, IndexError... on damaged bytes
        raise DataError(f"{source}: not a readable image ({type(e).__name__}: {e})") from None


def load_text(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text data file (a CSV, a class-name list); an unreadable one is a DataError naming it."""
    path = _existing(path)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable text file ({e})") from None


def load_bytes(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a raw binary data file (e.g. CIFAR's binary batches) as a uint8 vector."""
    path = _existing(path)
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: not readable ({e})") from None


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file (data only, no code); a truncated or invalid one is a DataError naming it."""
    path = _existing(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({e})") from None


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
