"""Backdoored models reused across runs: the no-defense cell of a table and its D-BR cell train the same model, so
with `reuse_backdoored: true` it is trained once and cached under the fingerprint of everything it depends on (data
content, attack, model, training settings and the precision they resolve to, seed), checked again on every load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from advml.errors import DataError
from advml.models import load_weights
from advml.utils.io import load_json, save_tensors, write_json
from advml.utils.runtime import cache_dir


def entry(fingerprint: dict[str, Any]) -> Path:
    """The cache folder of the model with this fingerprint."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "backdoored" / str(fingerprint["model"]["name"]) / digest


def load(model: torch.nn.Module, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """Load the cached weights into `model` and return the entry's record (training history and timing), or None
    when there is no finished entry. An entry made from anything else is refused, never loaded."""
    folder = entry(fingerprint)
    if not ((folder / "model.safetensors").is_file() and (folder / "info.json").is_file()):
        return None
    info = load_json(folder / "info.json")
    if not isinstance(info, dict) or info.get("fingerprint") != fingerprint:
        raise DataError(f"cached backdoored model {folder} was made from other data or settings; delete that "
                        "folder to retrain it")
    load_weights(model, folder / "model.safetensors")
    return {"history": info.get("history") or [], "timing": info.get("timing") or {}, "folder": str(folder)}


def store(model: torch.nn.Module, fingerprint: dict[str, Any], history: list[dict[str, Any]],
          timing: dict[str, Any]) -> Path:
    """Cache a freshly trained backdoored model (its record first, the weights last: they mark a finished entry)."""
    folder = entry(fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "info.json", {"fingerprint": fingerprint, "history": history, "timing": timing})
    save_tensors(folder / "model.safetensors", model.state_dict(), {"model": str(fingerprint["model"]["name"])})
    return folder
