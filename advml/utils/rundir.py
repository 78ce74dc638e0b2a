"""A run folder: the marker that says advml made it (its kind, fingerprint and clock), the lock that keeps a
second run out, and the files advml names there — the only ones `--overwrite` and the clearing of a killed
writer's temp files ever delete. User files in a run folder are left alone; a folder advml did not make is never
resumed into, overwritten or cleared."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from advml.errors import ConfigError, DataError, OutputError
from advml.provenance import RunScope, bind, refuse_mismatch, unbind
from advml.utils.io import load_json, remove_stale_temps, temp_target, write_json

try:
    import fcntl
except ImportError:  # no advisory locks (Windows): runs into one folder are not kept apart there
    fcntl = None  # type: ignore[assignment]

MARKER = ".advml-run.json"
LOCK = ".advml.lock"
CHECKPOINTS = "checkpoints"
# every file name advml writes at the top of a run folder (backdoor, detect and transfer runs)
OUTPUTS = frozenset({"config.yaml", "sd.yaml", "metrics.json", "timing.json", "model.safetensors",
                     "split.safetensors", "fct_hist.png", "success.png", MARKER})
FORMAT = "advml.run/1"


def _checkpoint_file(name: str) -> bool:
    return name.endswith((".safetensors", ".json"))


class RunFolder:
    """The `--out` folder of one run of `kind` ('backdoor', 'detect', 'transfer')."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        self.path, self.kind = Path(path), kind
        self._fd: int | None = None
        self._made: list[Path] = []  # folders this process created (removed again if the run never began)
        self._begun = False
        self._fingerprint: dict[str, Any] = {}
        self.scope: RunScope | None = None
        self._token: Any = None

    # --- what the folder holds ---------------------------------------------------------------------------
    def marker(self) -> dict[str, Any] | None:
        """The run marker, None when absent; a damaged one is a DataError naming it."""
        path = self.path / MARKER
        if not path.is_file():
            return None
        data = load_json(path)
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("fingerprint"), dict):
            raise DataError(f"{path}: not an advml run marker; move the folder's files away or use another --out")
        return data

    def is_run(self) -> bool:
        """Made by advml: its marker, or (a run from before markers) config.yaml beside metrics or checkpoints."""
        p = self.path
        return (p / MARKER).is_file() or ((p / "config.yaml").is_file() and any(
            (p / n).exists() for n in ("metrics.json", "timing.json", CHECKPOINTS)))

    def holds_files(self) -> bool:
        """Whether anything is in the folder but a lock file and temp files advml's killed writers left."""
        return self.path.is_dir() and any(p.name != LOCK and temp_target(p.name) not in OUTPUTS
                                          for p in self.path.iterdir())

    # --- lock --------------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the folder's lock (creating the folder); a ConfigError names the run that holds it."""
        missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"--out {self.path}: cannot create the folder ({e.strerror or e})") from None
        self._made = [p for p in missing if p.is_dir()]
        if fcntl is None:
            return
        lock = self.path / LOCK
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                self._undo()
                raise OutputError(f"--out {self.path}: cannot write there ({e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise ConfigError(f"--out {self.path} is in use by another advml run ({self._holder(lock)}); "
                                  "wait for it to finish or use another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its holder unlinked while we opened it
                break
            os.close(fd)
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.ftruncate(fd, 0)
        os.write(fd, info)
        self._fd = fd

    @staticmethod
    def _holder(lock: Path) -> str:
        try:
            h = json.loads(lock.read_text())
            return f"pid {h['pid']} on {h['host']}, since {h['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder not recorded yet"

    def release(self) -> None:
        """Save the run's clock, unbind its scope, drop the lock; a folder this process made and never began a
        run in is removed again."""
        if self.scope is not None:
            try:
                self.scope.save()
            finally:
                unbind(self._token)
                self.scope = None
        if self._fd is not None:
            try:
                (self.path / LOCK).unlink(missing_ok=True)
            finally:
                os.close(self._fd)
                self._fd = None
        if not self._begun:
            self._undo()

    def _undo(self) -> None:
        for p in self._made:  # deepest first: created folders, empty again
            try:
                p.rmdir()
            except OSError:
                break
        self._made = []

    # --- begin a run -------------------------------------------------------------------------------------
    def begin(self, fingerprint: Mapping[str, Any], *, resume: bool, overwrite: bool,
              start: float | None = None) -> RunScope:
        """Check a resumed run's fingerprint (naming what differs), clear an overwritten run's files, write the
        marker, bind the run's provenance scope until `release` (its clock continues a resumed run's; `start`: a
        perf_counter() reading when this process began the run)."""
        marker = self.marker()
        if marker is not None and resume and not overwrite:
            if marker.get("kind") != self.kind:
                raise ConfigError(f"--out {self.path} holds an advml {marker.get('kind')} run, not a {self.kind} run")
            refuse_mismatch(f"{self.path / MARKER}", marker["fingerprint"], fingerprint)
        if overwrite:
            self.clear()
            marker = None
        else:
            self.clear_stale_temps()
        previous = marker if resume and marker is not None else None
        scope = RunScope(self.path, fingerprint, previous=previous, save=self._write_marker, start=start)
        self._fingerprint, self._begun = scope.fingerprint, True
        scope.save()
        self.scope, self._token = scope, bind(scope)
        return scope

    def _write_marker(self, progress: dict[str, Any]) -> None:
        write_json(self.path / MARKER, {"format": FORMAT, "kind": self.kind, "fingerprint": self._fingerprint,
                                        **progress})

    # --- deletion: only what advml named ------------------------------------------------------------------
    def _owned(self, folder: Path) -> Callable[[str], bool]:
        return (lambda n: n in OUTPUTS) if folder == self.path else _checkpoint_file

    def _checkpoint_dirs(self) -> list[Path]:
        """checkpoints/ and every folder below it (not following links), deepest first."""
        top = self.path / CHECKPOINTS
        if not top.is_dir() or top.is_symlink():
            return []
        return [Path(d) for d, _, _ in os.walk(top, topdown=False)]

    def clear_stale_temps(self) -> list[Path]:
        """Remove what writers killed mid-write left: temp files of advml's own names, in advml's folders."""
        out = remove_stale_temps(self.path, self._owned(self.path))
        for d in self._checkpoint_dirs():
            out += remove_stale_temps(d, _checkpoint_file)
        return out

    def clear(self) -> list[Path]:
        """Delete the files advml wrote (outputs, checkpoints, their temp files) and the checkpoint folders it
        emptied; anything else stays."""
        removed = self.clear_stale_temps()
        for d in [*self._checkpoint_dirs(), self.path]:
            owned = self._owned(d)
            for p in d.iterdir():
                if (p.is_file() or p.is_symlink()) and owned(p.name):
                    p.unlink()
                    removed.append(p)
            if d != self.path:
                try:
                    d.rmdir()  # only when empty: a user's file keeps its folder
                except OSError:
                    pass
        return removed


def open_run(out: str | os.PathLike[str], kind: str, *, resume: bool, overwrite: bool) -> RunFolder:
    """Check `--out` before any work starts and lock it: a folder advml did not make is never written into."""
    folder = RunFolder(out, kind)
    path = folder.path
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is an existing file, not a folder")
    folder.acquire()  # first: a folder in use is reported as such, whatever it holds
    try:
        if folder.holds_files():
            if not folder.is_run():
                raise ConfigError(f"--out {path} holds files but no advml run (no {MARKER} or config.yaml); "
                                  "advml writes a run into an empty or new folder only")
            if not (resume or overwrite):
                raise ConfigError(f"--out {path} already holds files; pass --resume to continue that run "
                                  "or --overwrite to replace it")
    except BaseException:
        folder.release()
        raise
    return folder
