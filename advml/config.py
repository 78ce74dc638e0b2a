"""Settings validation (pydantic), YAML I/O and the one way settings from files and flags are combined."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from advml.errors import ConfigError, DataError

M = TypeVar("M", bound=BaseModel)
SEED_MAX = 2**63 - 2**16  # torch, NumPy and Python take 64-bit seeds; advml derives seed + k for its streams
Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description="a seed: an integer in [0, 2^63 - 2^16]")]


def check_seed(seed: int, name: str = "--seed") -> int:
    """`seed` if it is a seed advml can use (see Seed), else a ConfigError."""
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{name} must be an integer in [0, {SEED_MAX}] (64-bit), got {seed}")
    return seed


class Settings(BaseModel):
    """Base of every settings model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True,
                              protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _layer_on_field_defaults(cls, data: Any) -> Any:
        """A partial mapping for a nested-settings field goes on top of that field's own default (e.g. DBD's
        encoder), not on the nested class's generic defaults."""
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            value = out.get(name)
            if isinstance(value, Mapping) and field.default_factory is not None:
                default = field.default_factory()  # type: ignore[call-arg]
                if isinstance(default, BaseModel):
                    out[name] = deep_merge(default.model_dump(), value)
        return out

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(_message(type(self), e, ""), _issues(type(self), e, "")) from None


def validate(model: type[M], data: Mapping[str, Any], where: str = "") -> M:
    """Build `model` from `data`, turning validation errors into one readable ConfigError."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(_message(model, e, where), _issues(model, e, where)) from None



def _message(model: type[BaseModel], e: ValidationError, where: str) -> str:
    return "; ".join(f"unknown setting {k!r}{t}" if kind == "unknown" else (f"{k}: {t}" if k else t)
                     for k, kind, t in _issues(model, e, where))


def _issues(model: type[BaseModel], e: ValidationError, where: str) -> list[tuple[str, str, str]]:
    out = []
    for err in e.errors():
        key = ".".join([where] * bool(where) + [str(p) for p in err["loc"]])
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigError):  # from a nested Settings or a validator: keep its path and text
            out += [(".".join(p for p in (key, k) if p), kind, t) for k, kind, t in inner.issues] \
                or [(key, "value", str(inner))]
        elif err["type"] == "extra_forbidden":
            valid = _fields_at(model, err["loc"][:-1])
            close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append((key, "unknown", f"{hint}; valid: {', '.join(valid)}"))
        else:
            out.append((key, "value", f"{err['msg']} (got {err.get('input')!r})"))
    return out


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


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested mappings: {'train.lr': 0.1, 'seed': 1} -> {'train': {'lr': 0.1}, 'seed': 1}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p!r} is given both a value and settings under it")
        node[leaf] = value
    return out


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """['train.lr=0.1', 'attack.size=4'] -> {'train': {'lr': 0.1}, 'attack': {'size': 4}} (YAML values)."""
    flat: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            flat[key.strip()] = safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key.strip()}: not a valid YAML value ({getattr(e, 'problem', None) or e})") \
                from None
    return nest(flat)


MAX_YAML_NODES = 100_000  # a settings file (aliases expanded) is far smaller; a 'billion laughs' file is not
MAX_CONFIG_BYTES = 16 * 2**20


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader (plain data only, no tags that build objects), refusing documents whose aliases would
    expand to more than MAX_YAML_NODES nodes, or that refer to themselves."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes of `root` as if every alias were copied (each distinct node sized once), iteratively."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        if done:
            open_.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_YAML_NODES:
                raise ConfigError(f"YAML aliases expand to more than {MAX_YAML_NODES:,} values (a 'billion laughs' "
                                  "document?); refused")
            continue
        if id(node) in size:
            continue
        if id(node) in open_:
            raise ConfigError("a YAML alias refers to the node that holds it (a recursive document); refused")
        open_.add(id(node))
        stack.append((node, True))
        stack += [(c, False) for c in children if id(c) not in size]


def safe_load(text: str) -> Any:
    """YAML text to plain data with the bounded safe loader."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise ConfigError("YAML nested too deeply; refused") from None
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a UTF-8 YAML mapping with the bounded safe loader."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such config file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is too large for a settings file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: not readable ({e.strerror or e})") from None
    try:
        data = safe_load(text) or {}
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def dump_yaml(data: Mapping[str, Any]) -> str:
    """YAML text of a plain mapping, keys in insertion order."""
    return yaml.safe_dump(dict(data), sort_keys=False)
