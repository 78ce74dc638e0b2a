"""Provenance: a fingerprint of everything a result depends on (data content, attack, model, defense, training,
seed), stamped into every checkpoint written under a run (or cache entry) and checked before one is resumed; and
the run's clock, summed over every process that worked on the run.

A scope (`with run_scope(root, fingerprint): ...`) binds a folder to its fingerprint; `stamp(path)` and
`check(path, meta)` (called by the trainer's checkpoint functions) act on checkpoints under that folder only, so a
cache entry opened inside a run keeps its own fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from pathlib import Path
from typing import Any

from advml.errors import ConfigError, DataError

STAMP_KEY = "advml_run"  # the checkpoint metadata entry holding the fingerprint (JSON)
RUN_INDEPENDENT = frozenset({"progress", "device", "num_workers", "eval_batch_size", "compile"})  # settings that
# change how a run is executed, never its result: they may differ on resume


def train_key(train: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings that decide a result (all but progress bars, device, loader workers, eval batch)."""
    return {k: v for k, v in train.items() if k not in RUN_INDEPENDENT}


def file_sha256(path: str | Path | None) -> str | None:
    """The sha256 of a file (e.g. --init-weights), None for no path."""
    if not path:
        return None
    h = hashlib.sha256()
    with Path(path).expanduser().open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def differences(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like values, each with its two values."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        if "name" in before and "name" in after and before["name"] != after["name"]:  # another method: its
            return differences(before["name"], after["name"], f"{prefix}.name" if prefix else "name")  # options follow
        out = []
        for k in list(before) + [k for k in after if k not in before]:
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in after:
                out.append(f"{key} (only in the earlier run)")
            elif k not in before:
                out.append(f"{key} (new: {_short(after[k])})")
            else:
                out += differences(before[k], after[k], key)
        return out
    if before != after:
        return [f"{prefix or 'value'} ({_short(before)} -> {_short(after)})"]
    return []


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


RESUME_HINT = "resume with the same settings, or pass --overwrite to start that run over"


def refuse_mismatch(where: str, before: Any, after: Any, hint: str = RESUME_HINT) -> None:
    """ConfigError naming every setting that differs between the run in `where` and the one asked for."""
    diff = differences(before, after)
    if diff:
        raise ConfigError(f"{where} was written by a run with other settings: {', '.join(diff[:6])}"
                          + (f" and {len(diff) - 6} more" if len(diff) > 6 else "") + f"; {hint}")


class RunScope:
    """One folder's fingerprint and clock: seconds and per-stage seconds of earlier processes plus this one's."""

    def __init__(self, root: str | Path, fingerprint: Mapping[str, Any], *, previous: Mapping[str, Any] | None = None,
                 save: Callable[[dict[str, Any]], None] | None = None, start: float | None = None,
                 hint: str = RESUME_HINT) -> None:
        self.root, self.hint = Path(root).resolve(), hint
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        prev = previous or {}
        self.before = float(prev.get("seconds") or 0.0)
        self.stages: dict[str, float] = {str(k): float(v) for k, v in (prev.get("stages") or {}).items()}
        self.start = time.perf_counter() if start is None else start  # a perf_counter() reading
        self._open: dict[str, tuple[float, float]] = {}  # stage -> (seconds before this process, entry time)
        self._save = save

    def covers(self, path: str | os.PathLike[str]) -> bool:
        """Whether `path` lies under this scope's folder."""
        return Path(path).resolve().is_relative_to(self.root)

    def seconds(self) -> float:
        """Wall seconds of the run so far: earlier processes (up to their last save) plus this one."""
        return self.before + time.perf_counter() - self.start

    def progress(self) -> dict[str, Any]:
        """The clock as saved: total seconds and seconds per stage (open stages up to now)."""
        now = time.perf_counter()
        stages = dict(self.stages) | {k: acc + now - t for k, (acc, t) in self._open.items()}
        return {"seconds": round(self.seconds(), 3), "stages": {k: round(v, 3) for k, v in stages.items()}}

    def save(self) -> None:
        """Persist the clock (each checkpoint does, so a killed process's time counts up to its last one)."""
        if self._save is not None:
            self._save(self.progress())

    @contextmanager
    def stage(self, name: str) -> Iterator[Callable[[], float]]:
        """Time a stage across resumes; yields a function giving the stage's seconds so far."""
        self._open[name] = (self.stages.get(name, 0.0), time.perf_counter())
        try:
            yield lambda: self.stages.get(name, 0.0) if name not in self._open else \
                self._open[name][0] + time.perf_counter() - self._open[name][1]
        finally:
            acc, t = self._open.pop(name)
            self.stages[name] = acc + time.perf_counter() - t

    def stamp(self) -> dict[str, str]:
        """Checkpoint metadata carrying the fingerprint; saves the clock."""
        self.save()
        return {STAMP_KEY: json.dumps(self.fingerprint, sort_keys=True)}

    def check(self, path: str | os.PathLike[str], meta: Mapping[str, str]) -> None:
        """Refuse a checkpoint that carries no fingerprint or another run's, naming what differs."""
        raw = meta.get(STAMP_KEY)
        if raw is None:
            raise ConfigError(f"{path}: checkpoint carries no run fingerprint (written by an older advml or "
                              f"another tool); {self.hint.split(', or ')[-1]}")
        try:
            stored = json.loads(raw)
        except ValueError:
            raise DataError(f"{path}: damaged checkpoint (its run fingerprint is not JSON)") from None
        refuse_mismatch(str(path), stored, self.fingerprint, self.hint)


_SCOPES: ContextVar[tuple[RunScope, ...]] = ContextVar("advml_run_scopes", default=())


def bind(scope: RunScope) -> Token:
    """Bind `scope` until `unbind(token)` (nested scopes: the innermost one covering a path wins)."""
    return _SCOPES.set(_SCOPES.get() + (scope,))


def unbind(token: Token) -> None:
    """Undo the `bind` that returned `token`."""
    _SCOPES.reset(token)


@contextmanager
def run_scope(scope: RunScope) -> Iterator[RunScope]:
    """Bind `scope` while the body runs."""
    token = bind(scope)
    try:
        yield scope
    finally:
        unbind(token)


def scope_for(path: str | os.PathLike[str]) -> RunScope | None:
    """The innermost bound scope whose folder holds `path`."""
    return next((s for s in reversed(_SCOPES.get()) if s.covers(path)), None)


def current() -> RunScope | None:
    """The innermost bound scope (the run being executed), if any."""
    scopes = _SCOPES.get()
    return scopes[-1] if scopes else None


def stamp(path: str | os.PathLike[str]) -> dict[str, str]:
    """Metadata to add to a checkpoint written at `path` ({} outside any scope)."""
    scope = scope_for(path)
    return scope.stamp() if scope is not None else {}


def check(path: str | os.PathLike[str], meta: Mapping[str, str]) -> None:
    """Refuse to resume the checkpoint at `path` unless it carries its scope's fingerprint (no-op outside)."""
    scope = scope_for(path)
    if scope is not None:
        scope.check(path, meta)
