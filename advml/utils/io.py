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
import math
import os
import pickle
import pickletools
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
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


MAX_ARRAY_BYTES = int(os.environ.get("ADVML_MAX_ARRAY_BYTES", 8 * 2**30))  # one array read from a file, at most
MAX_IMAGE_PIXELS = 2**26  # one decoded image (64 megapixels), at most
_CHUNK = 1 << 24


def load_npz(path: str | os.PathLike[str], keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays `keys` (all when None; absent ones are left out) of an `.npz`, or one `.npy` as 'arr_0'. Read
    with `allow_pickle=False`, key by key: each array's header is checked against the archive's declared sizes
    (and MAX_ARRAY_BYTES) before anything is decompressed or allocated, so unused or bloated members cost nothing."""
    path = _existing(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic.startswith(b"PK") or zipfile.is_zipfile(path):  # an archive (a damaged one fails to open)
            with zipfile.ZipFile(path) as zf:
                members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
                wanted = list(members) if keys is None else [k for k in keys if k in members]
                out = {}
                for k in wanted:
                    info = zf.getinfo(members[k])
                    with zf.open(info) as f:
                        out[k] = _read_npy(f, info.file_size, path, k)
                return out
        if magic != b"\x93NUMPY":
            raise UnsafeFileError(f"{path}: refused, not an .npy/.npz file (reading it would mean unpickling it)")
        with open(path, "rb") as f:
            return {"arr_0": _read_npy(f, path.stat().st_size, path)}
    except (UnsafeFileError, DataError):
        raise
    except MemoryError:
        raise DataError(f"{path}: its arrays do not fit in memory") from None
    except Exception as e:  # whatever the zip and .npy parsers raise on damaged bytes (BadZipFile, EOFError,
        # NotImplementedError for a corrupt zip version, zlib.error, ValueError for a bad header, ...)
        raise DataError(f"{path}: not a readable NumPy file ({type(e).__name__}: {e})") from None


def load_array(path: str | os.PathLike[str]) -> np.ndarray:
    """The one array of a `.npy` file (an `.npz` archive is refused: name the array file itself)."""
    path = _existing(path)
    if zipfile.is_zipfile(path):
        raise DataError(f"{path}: an .npz archive, not one .npy array; save the array with np.save")
    return load_npz(path)["arr_0"]


def npz_keys(path: str | os.PathLike[str]) -> list[str]:
    """The array names of an `.npz` (['arr_0'] for a `.npy`), read from its directory alone."""
    path = _existing(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except Exception as e:  # a damaged directory
        raise DataError(f"{path}: not a readable NumPy file ({type(e).__name__}: {e})") from None
    return ["arr_0"]


def _read_npy(f: Any, size: int, path: Path, key: str | None = None) -> np.ndarray:
    """One .npy stream of `size` bytes: header checked (no objects, sizes agree, bounded), then read in chunks;
    a big-endian array comes back in native byte order."""
    which = f" (array {key!r})" if key else ""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject:
        raise UnsafeFileError(f"{path}: refused, it holds pickled objects{which}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != size - f.tell():
        raise DataError(f"{path}: damaged{which}: it declares shape {shape} ({nbytes:,} bytes) but "
                        f"{size - f.tell():,} bytes follow its header")
    if nbytes > MAX_ARRAY_BYTES:
        raise DataError(f"{path}: a {nbytes / 2**30:.1f} GiB array{which} is larger than ADVML_MAX_ARRAY_BYTES "
                        f"({MAX_ARRAY_BYTES / 2**30:.1f} GiB)")
    arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
    buf, pos = memoryview(arr.reshape(-1)).cast("B"), 0  # type: ignore[arg-type]  # numpy: __buffer__ only on 3.12+
    while pos < nbytes:
        n = f.readinto(buf[pos:pos + _CHUNK])
        if not n:
            raise DataError(f"{path}: truncated array data{which}")
        pos += n
    arr = arr.T if fortran else arr
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


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
        with warnings.catch_warnings():  # the size is checked here, not warned about
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(file)
        with im:
            if im.width * im.height > MAX_IMAGE_PIXELS:  # checked before decoding: a small file can declare a lot
                raise DataError(f"{source}: a {im.width}x{im.height} image is larger than "
                                f"{MAX_IMAGE_PIXELS / 2**20:.0f} megapixels; refused")
            return np.asarray(im.convert(mode)).copy()
    except DataError:
        raise
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


MAX_PICKLE_BYTES = 2**31  # a CIFAR python batch is 31 MB (CIFAR-100's train file 155 MB)


def load_restricted_pickle(path: str | os.PathLike[str]) -> Any:
    """Read a pickle that may only contain NumPy arrays, numbers, strings, bytes, lists and dicts. Every opcode
    is first walked without running anything (pickletools), so a length field larger than the file is refused
    before any allocation; then the restricted unpickler admits NumPy array reconstruction only."""
    path = _existing(path)
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes is too large for a CIFAR python batch")
    with open(path, "rb") as f:
        data = f.read()
    try:
        for _ in pickletools.genops(io.BytesIO(data)):  # parses arguments, reads at most what the file holds
            pass
    except Exception as e:  # ValueError for a bad or oversized length, an unknown opcode or truncated data
        raise DataError(f"{path}: corrupt pickle ({e})") from None
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(f"{path}: refused, {e}") from None
    except (EOFError, ValueError, TypeError, MemoryError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"{path}: corrupt pickle ({type(e).__name__}: {e})") from None


def _existing(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return path
