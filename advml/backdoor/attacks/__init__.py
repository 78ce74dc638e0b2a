"""Backdoor attacks: one module per attack plus one line here."""

from __future__ import annotations

from typing import Any

from advml.backdoor.attacks.badnets import BadNets
from advml.backdoor.attacks.base import AttackSettings, BackdoorAttack
from advml.errors import ConfigError
from advml.registry import Registry

ATTACKS: Registry[type[BackdoorAttack]] = Registry("attack")
ATTACKS.add("badnets", BadNets, "BadNets patch trigger (square/checkerboard/file), all2one or all2all; "
            "rate = fraction of the whole training set")


def build_attack(spec: str | dict[str, Any], **settings: Any) -> BackdoorAttack:
    """An attack from a name plus settings, or from a mapping {'name': ..., **settings}."""
    if isinstance(spec, dict):
        spec = dict(spec)
        if "name" not in spec:
            raise ConfigError("attack settings need a 'name'")
        settings = {**spec, **settings}
        spec = settings.pop("name")
    return ATTACKS.get(spec)(**settings)


__all__ = ["ATTACKS", "AttackSettings", "BackdoorAttack", "BadNets", "build_attack"]
