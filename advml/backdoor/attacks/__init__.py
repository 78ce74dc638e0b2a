"""Backdoor attacks: one module per attack, each class registered at its definition (`@ATTACKS.register`); the
imports below load them in the listing's order."""

from __future__ import annotations

from typing import Any

# isort: off
# registration order = the listing's order: the baseline row, the seed table's attacks, then the others
from advml.backdoor.attacks.none import NoAttack
from advml.backdoor.attacks.badnets import BadNets
from advml.backdoor.attacks.blended import Blended, BlendStrip
from advml.backdoor.attacks.trojan import Trojan
from advml.backdoor.attacks.trojannn import TrojanNN
from advml.backdoor.attacks.clean_label import CleanLabel
from advml.backdoor.attacks.sig import SIG
from advml.backdoor.attacks.wanet import WaNet
from advml.backdoor.attacks.issba import ISSBA
from advml.backdoor.attacks.low_frequency import LowFrequency
# isort: on
from advml.backdoor.attacks.base import ATTACKS, AttackSettings, BackdoorAttack


def build_attack(spec: str | dict[str, Any], **settings: Any) -> BackdoorAttack:
    """An attack from a name plus settings, or from a mapping {'name': ..., **settings}."""
    return ATTACKS.build(spec, **settings)


__all__ = [
    "ATTACKS",
    "ISSBA",
    "SIG",
    "AttackSettings",
    "BackdoorAttack",
    "BadNets",
    "BlendStrip",
    "Blended",
    "CleanLabel",
    "LowFrequency",
    "NoAttack",
    "Trojan",
    "TrojanNN",
    "WaNet",
    "build_attack",
]
