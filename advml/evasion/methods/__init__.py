"""Transfer methods, composable by name: `compose("mi-ti-di+rap-ls", model)`; each registers at its definition
(`@METHODS.register`), the imports below load them."""

from __future__ import annotations

from typing import Any

from torch import nn

from advml.config import validate
from advml.errors import ConfigError
from advml.evasion.base import METHODS, IterativeAttack, Method

# isort: off
# registration order = the listing's order (and the composition order of `parse`)
from advml.evasion.methods.momentum import MI
from advml.evasion.methods.translation import TI
from advml.evasion.methods.inputs import DI, SI, Admix
from advml.evasion.methods.neighbourhood import PGN, VMI
from advml.evasion.methods.rap import RAP, RAPLS, RAPWarm
# isort: on

def parse(spec: str) -> list[str]:
    """'mi-ti-di+rap-ls' -> ['mi', 'ti', 'di', 'rap-ls']; 'ifgsm' -> []."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("empty transfer method; e.g. 'mi-ti-di' or 'mi-ti-di+rap-ls'")
    base, *extras = spec.strip().lower().split("+")
    names = [] if base == "ifgsm" else [n for n in base.split("-") if n]
    names += extras
    for n in names:
        METHODS.get(n)
    if len(set(names)) != len(names) or sum(n.startswith("rap") for n in names) > 1:
        raise ConfigError(f"method {spec!r} repeats an ingredient")
    if {"pgn", "vmi"} <= set(names):
        raise ConfigError(f"method {spec!r}: pgn and vmi both replace the gradient estimate; keep one")
    return names


def build_method(name: str, settings: dict[str, Any] | None = None) -> Method:
    """One registered method with its settings (validated: unknown ones named as `options.<name>.<key>`)."""
    cls = METHODS.get(name)
    return cls(validate(cls.Settings, settings or {}, f"options.{name}"))


def check_options(options: dict[str, dict[str, Any]]) -> None:
    """Validate each method's options against its settings (at load time, before any model is built)."""
    for name, settings in options.items():
        cls = METHODS.get(name)
        validate(cls.Settings, settings, f"options.{name}")


def compose(spec: str, model: nn.Module, *, options: dict[str, dict[str, Any]] | None = None,
            **attack_settings: Any) -> IterativeAttack:
    """An IterativeAttack with the methods named in `spec`; `options` = {method: {setting: value}}."""
    names = parse(spec)
    options = options or {}
    unknown = set(options) - set(names)
    if unknown:
        raise ConfigError(f"options for {sorted(unknown)} but the method is {spec!r}")
    methods = [build_method(n, options.get(n, {})) for n in names]
    if any(isinstance(m, Admix) and m.settings.scales > 1 for m in methods) and any(isinstance(m, SI) for m in methods):
        raise ConfigError("admix already makes SI's scaled copies (m1 mixes x m2 scales); drop 'si', or give "
                          "admix scales: 1")
    return IterativeAttack(model, methods=methods, spec=spec, **attack_settings)


__all__ = ["DI", "METHODS", "MI", "PGN", "RAP", "RAPLS", "SI", "TI", "VMI", "Admix", "RAPWarm", "build_method",
           "check_options", "compose", "parse"]
