"""Settings validation (pydantic), YAML I/O and the one way settings from files and flags are combined."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from advml.errors import ConfigError, DataError

M = TypeVar("M", bound=BaseModel)


class Settings(BaseModel):
    """Base of every settings model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def validate(model: type[M], data: Mapping[str, Any], where: str = "") -> M:
    """Build `model` from `data`, turning validation errors into one readable ConfigError."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(_message(model, e, where)) from None


def _message(model: type[BaseModel], e: ValidationError, where: str) -> str:
    msgs = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        key = f"{where}.{loc}" if where else loc
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigError):
            msgs.append(str(inner))
        elif err["type"] == "extra_forbidden":
            valid = _fields_at(model, err["loc"][:-1])
            close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msgs.append(f"unknown setting {key!r}{hint}; valid: {', '.join(valid)}")
        else:
            msgs.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(msgs)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, merging nested mappings."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """['train.lr=0.1', 'attack.size=4'] -> {'train': {'lr': 0.1}, 'attack': {'size': 4}} (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return out


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def dump_yaml(data: Mapping[str, Any]) -> str:
    """YAML text of a plain mapping, keys in insertion order."""
    return yaml.safe_dump(dict(data), sort_keys=False)
