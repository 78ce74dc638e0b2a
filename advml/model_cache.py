"""Cached models: a folder with `info.json` (what the model was made from, and its record) and `model.safetensors`,
written in that order, so the weights mark a finished entry; reading checks the record against what the caller would
make now, and an entry made from anything else is refused, never loaded (the zoo's models use these too).

Backdoored models reused across runs: the no-defense cell of a table and its D-BR cell train the same model, so
with `reuse_backdoored: true` it is trained once and cached under the fingerprint of everything it depends on (data
content, attack, model, training settings and the precision they resolve to, seed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from advml.errors import DataError
from advml.models import load_weights
from advml.provenance import differences
from advml.utils.io import load_json, save_tensors, write_json
from advml.utils.runtime import cache_dir

INFO, WEIGHTS = "info.json", "model.safetensors"


def read_entry(folder: Path, made_from: dict[str, Any], *, what: str, under: str | None = None
               ) -> dict[str, Any] | None:
    """A finished entry's info, after checking that its record of what it was made from (the `under` key of
    info.json, else the keys of `made_from` at its top level) equals `made_from`; None when it is unfinished."""
    if not ((folder / WEIGHTS).is_file() and (folder / INFO).is_file()):
        return None
    info = load_json(folder / INFO)
    info = info if isinstance(info, dict) else {}
    recorded = info.get(under) if under else {k: info.get(k) for k in made_from}
    diff = differences(recorded if isinstance(recorded, dict) else {}, made_from)
    if diff:
        raise DataError(f"{what} {folder} was made from other data or settings ({', '.join(diff[:3])}); delete "
                        "that folder to retrain it")
    return info


def load_entry(model: nn.Module, folder: Path, made_from: dict[str, Any], *, what: str, under: str | None = None
               ) -> dict[str, Any] | None:
    """`read_entry`, then its weights into `model`."""
    info = read_entry(folder, made_from, what=what, under=under)
    if info is not None:
        load_weights(model, folder / WEIGHTS)
    return info


def write_entry(folder: Path, model: nn.Module, info: dict[str, Any], metadata: dict[str, str]) -> Path:
    """Cache a freshly trained model: its info first, the weights last (they mark a finished entry)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / INFO, info)
    save_tensors(folder / WEIGHTS, model.state_dict(), metadata)
    return folder


def entry(fingerprint: dict[str, Any]) -> Path:
    """The cache folder of the backdoored model with this fingerprint."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "backdoored" / str(fingerprint["model"]["name"]) / digest


def load(model: nn.Module, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """Load the cached backdoored model into `model` and return the entry's record (training history and timing),
    or None when there is no finished entry."""
    folder = entry(fingerprint)
    info = load_entry(model, folder, fingerprint, what="cached backdoored model", under="fingerprint")
    if info is None:
        return None
    return {"history": info.get("history") or [], "timing": info.get("timing") or {}, "folder": str(folder)}


def store(model: nn.Module, fingerprint: dict[str, Any], history: list[dict[str, Any]],
          timing: dict[str, Any]) -> Path:
    """Cache a freshly trained backdoored model."""
    return write_entry(entry(fingerprint), model, {"fingerprint": fingerprint, "history": history, "timing": timing},
                       {"model": str(fingerprint["model"]["name"])})
