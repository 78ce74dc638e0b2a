"""Model and optimizer state as safetensors entries (a checkpoint holds only tensors plus JSON metadata, never a
pickle): the one encoding the trainer's and StegaStamp's checkpoints share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


def model_state(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The model weights among a checkpoint's tensors (keys `model.*`; optimiser and RNG state left out)."""
    return {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer's state for a safetensors checkpoint: tensors as `<prefix>.<param id>.<key>`, the rest (step
    counts...) as JSON scalars `<param id>.<key>`; `load_optimizer` restores them."""
    tensors, scalars = {}, {}
    for pid, state in opt.state_dict()["state"].items():
        for key, val in state.items():
            if isinstance(val, Tensor):
                tensors[f"{prefix}.{pid}.{key}"] = val
            else:
                scalars[f"{pid}.{key}"] = val
    return tensors, scalars


def optimizer_state(tensors: Mapping[str, Tensor], prefix: str, device: torch.device) -> dict[int, dict[str, Any]]:
    """The per-parameter tensors `optimizer_tensors` wrote under `prefix`, on `device`."""
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith(prefix + "."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v.to(device)
    return state


def load_optimizer(opt: torch.optim.Optimizer, state: dict[int, dict[str, Any]], scalars: Mapping[str, Any],
                   groups: list[dict[str, Any]]) -> None:
    """Restore an optimizer from its per-parameter tensors (`optimizer_state`), scalars and param groups."""
    for k, v in scalars.items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": groups})
