"""Transfer methods, composable by name: `compose("mi-ti-di+rap-ls", model)`; each registers at its definition
(`@METHODS.register`), the imports below load them."""

from __future__ import annotations

from typing import Any

from torch import nn

from advml.config import Settings, validate
from advml.errors import ConfigError
from advml.evasion.base import METHODS, IterativeAttack

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


def method_settings(spec: str, options: dict[str, dict[str, Any]] | None = None) -> dict[str, Settings]:
    """Each ingredient of `spec` with its validated settings; `options` may only name ingredients of `spec`
    (unknown settings are named as `options.<name>.<key>`, with the closest valid one)."""
    names, options = parse(spec), options or {}
    unknown = set(options) - set(names)
    if unknown:
        raise ConfigError(f"options for {sorted(unknown)} but the method is {spec!r}")
    return {n: validate(METHODS.get(n).Settings, options.get(n, {}), f"options.{n}") for n in names}


def compose(spec: str, model: nn.Module, *, options: dict[str, dict[str, Any]] | None = None,
            **attack_settings: Any) -> IterativeAttack:
    """An IterativeAttack with the methods named in `spec`; `options` = {method: {setting: value}}."""
    methods = [METHODS.get(n)(settings) for n, settings in method_settings(spec, options).items()]
    if any(isinstance(m, Admix) and m.settings.scales > 1 for m in methods) and any(isinstance(m, SI) for m in methods):
        raise ConfigError("admix already makes SI's scaled copies (m1 mixes x m2 scales); drop 'si', or give "
                          "admix scales: 1")
    return IterativeAttack(model, methods=methods, spec=spec, **attack_settings)


__all__ = ["DI", "METHODS", "MI", "PGN", "RAP", "RAPLS", "SI", "TI", "VMI", "Admix", "RAPWarm", "compose",
           "method_settings", "parse"]
