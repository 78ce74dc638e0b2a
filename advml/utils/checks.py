"""Input checks shared by triggers, attacks, metrics, datasets and weights: one place for value checks."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from advml.errors import AdvmlError, DataError, InputError


def check_unit_range(x: Tensor, name: str, error: type[AdvmlError] = InputError) -> Tensor:
    """Raise `error` unless every value of the float tensor `x` lies in [0, 1] (so no NaN or inf)."""
    if x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))  # one pass; NaN propagates into lo/hi
        if not (lo >= 0 and hi <= 1):
            if lo != lo or hi != hi:
                raise error(f"{name}: NaN values")
            raise error(f"{name} must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return x


def check_images(x: object, name: str = "images", channels: int | None = None) -> Tensor:
    """Raise InputError unless `x` is a float tensor (N,C,H,W) with values in [0,1] (so no NaN or inf)."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be float in [0, 1], got dtype {x.dtype} (divide uint8 images by 255)")
    if x.ndim != 4:
        raise InputError(f"{name} must be (N, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise InputError(f"{name} must have {channels} channels, got shape {tuple(x.shape)}")
    return check_unit_range(x, name)


def check_labels(labels: Tensor, num_classes: int, name: str = "labels",
                 error: type[AdvmlError] = InputError) -> Tensor:
    """Raise `error` unless every label lies in [0, num_classes)."""
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise error(f"{name} must lie in [0, {num_classes}), got [{lo}, {hi}]")
    return labels


def check_state(state: Mapping[str, Tensor], expected: Mapping[str, Tensor], source: str) -> None:
    """Raise DataError (naming `source`) unless `state` holds exactly `expected`'s keys, each of its shape, with
    finite values: a damaged or foreign checkpoint is refused before any of it is loaded."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    bad = [f"{len(missing)} missing (e.g. {missing[0]!r})" if missing else "",
           f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})" if unexpected else "",
           f"{len(shapes)} of another shape (e.g. {shapes[0]!r}: {tuple(state[shapes[0]].shape)}, expected "
           f"{tuple(expected[shapes[0]].shape)})" if shapes else ""]
    if any(bad):
        raise DataError(f"{source}: damaged checkpoint, tensors do not fit: " + "; ".join(b for b in bad if b))
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise DataError(f"{source}: damaged checkpoint, {len(nonfinite)} tensors hold NaN or inf values "
                        f"(e.g. {nonfinite[0]!r})")


def check_progress(path: str | os.PathLike[str], tensors: dict[str, Tensor], meta: Mapping[str, str], model: nn.Module,
                   optimizer: torch.optim.Optimizer, generator: torch.Generator,
                   max_epochs: int) -> tuple[dict[int, dict[str, Any]], dict[str, Any], list, int, list]:
    """A Trainer checkpoint's optimiser state, scalars, param groups, epoch and history, each checked against the
    model, optimiser and generator they will be loaded into."""
    check_state({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, model.state_dict(), str(path))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            i = int(pid) if pid.isdigit() else -1
            expected = () if key == "step" else tuple(params[i].shape) if 0 <= i < len(params) else None
            if expected is None or tuple(v.shape) != expected or (v.is_floating_point() and
                                                                  not bool(torch.isfinite(v).all())):
                raise DataError(f"{path}: damaged checkpoint, optimiser state {k!r} does not fit the model")
            state.setdefault(i, {})[key] = v.to(params[i].device) if 0 <= i < len(params) else v
    for name, live in (("rng.data", generator.get_state()), ("rng.torch", torch.get_rng_state())):
        t = tensors.get(name)
        if t is None or t.dtype != live.dtype or t.shape != live.shape:
            raise DataError(f"{path}: damaged checkpoint, {name} is not a random generator state")
    try:
        epoch, history = int(meta["epoch"]), json.loads(meta["history"])
        scalars, groups = json.loads(meta["optim_scalars"]), json.loads(meta["param_groups"])
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: damaged checkpoint, unreadable progress record ({e})") from None
    ok = (0 <= epoch <= max_epochs and isinstance(history, list) and len(history) == epoch
          and all(isinstance(r, dict) for r in history) and isinstance(scalars, dict)
          and all(isinstance(k, str) and k.split(".", 1)[0].isdigit() for k in scalars)
          and isinstance(groups, list) and len(groups) == len(optimizer.param_groups)
          and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                  and len(g["params"]) == len(own["params"])
                  for g, own in zip(groups, optimizer.param_groups)))
    if not ok:
        raise DataError(f"{path}: damaged checkpoint, its epoch ({meta.get('epoch')}), history or optimiser "
                        "groups do not fit this training")
    return state, scalars, groups, epoch, history
