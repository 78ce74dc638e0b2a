"""Transfer methods, composable by name: `compose("mi-ti-di+rap-ls", model)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from advml.errors import ConfigError
from advml.evasion.base import IterativeAttack, Method
from advml.evasion.methods.inputs import DI, SI, Admix
from advml.evasion.methods.momentum import MI
from advml.evasion.methods.neighbourhood import PGN, VMI
from advml.evasion.methods.rap import RAP
from advml.evasion.methods.translation import TI
from advml.registry import Registry

METHODS: Registry[Callable[..., Method]] = Registry("transfer method")
METHODS.add("mi", MI, "momentum, decay 1.0")
METHODS.add("ti", TI, "Gaussian-smoothed gradient (kernel 5 at 299 px, scaled to the image size)")
METHODS.add("di", DI, "diverse inputs: random resize in [H, H*330/299) and pad, p 0.7, a draw per copy")
METHODS.add("si", SI, "scale invariance: 5 copies x/2^i")
METHODS.add("admix", Admix, "Admix: 3 clean other-class images added at 0.2, each mix in 5 scales x/2^j")
METHODS.add("pgn", PGN, "penalised gradient norm: 20 neighbours at 3 eps, look-ahead mix 0.5 (with mi: PGN)")
METHODS.add("vmi", VMI, "variance tuning: 20 neighbours at 1.5 eps (with mi: VMI-FGSM)")
METHODS.add("rap", RAP, "reverse adversarial perturbation from the first iteration (eps_n 16/255, K 8)")
METHODS.add("rap-ls", lambda **kw: RAP(**{"late_start": 100, **kw}), "RAP with a late start at iteration 100")
METHODS.add("rap-warm", lambda **kw: RAP(**{"late_start": 100, "warm": True, **kw}),
            "RAP-LS whose n_rap is carried over between iterations (2 inner steps after the first)")


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


def compose(spec: str, model: nn.Module, *, options: dict[str, dict[str, Any]] | None = None,
            **attack_settings: Any) -> IterativeAttack:
    """An IterativeAttack with the methods named in `spec`; `options` = {method: {setting: value}}."""
    names = parse(spec)
    options = options or {}
    unknown = set(options) - set(names)
    if unknown:
        raise ConfigError(f"options for {sorted(unknown)} but the method is {spec!r}")
    methods = []
    for n in names:
        try:
            methods.append(METHODS.get(n)(**options.get(n, {})))
        except TypeError as e:
            raise ConfigError(f"{n}: {e}") from None
    if any(isinstance(m, Admix) and m.scales > 1 for m in methods) and any(isinstance(m, SI) for m in methods):
        raise ConfigError("admix already makes SI's scaled copies (m1 mixes x m2 scales); drop 'si', or give "
                          "admix scales: 1")
    return IterativeAttack(model, methods=methods, spec=spec, **attack_settings)


__all__ = ["DI", "METHODS", "MI", "PGN", "RAP", "SI", "TI", "VMI", "Admix", "compose", "parse"]
