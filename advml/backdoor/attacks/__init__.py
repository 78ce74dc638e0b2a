"""Backdoor attacks: one module per attack plus one line here."""

from __future__ import annotations

from typing import Any

from advml.backdoor.attacks.badnets import BadNets
from advml.backdoor.attacks.base import AttackSettings, BackdoorAttack
from advml.backdoor.attacks.blended import Blended, BlendStrip
from advml.backdoor.attacks.clean_label import CleanLabel
from advml.backdoor.attacks.issba import ISSBA
from advml.backdoor.attacks.low_frequency import LowFrequency
from advml.backdoor.attacks.none import NoAttack
from advml.backdoor.attacks.sig import SIG
from advml.backdoor.attacks.trojan import Trojan
from advml.backdoor.attacks.trojannn import TrojanNN
from advml.backdoor.attacks.wanet import WaNet
from advml.registry import Registry

ATTACKS: Registry[type[BackdoorAttack]] = Registry("attack")
ATTACKS.add("none", NoAttack, "No attack (standard training): the baseline row; no ASR")
ATTACKS.add("badnets", BadNets, "BadNets patch trigger (square/checkerboard/file), all2one or all2all; "
            "rate = fraction of the whole training set")
ATTACKS.add("blend_kitty", Blended, "Blended: Hello Kitty alpha-blended (alpha 0.2); rate = fraction of the whole "
            "training set")
ATTACKS.add("blend_strip", BlendStrip, "Blended: strip pattern alpha-blended (alpha 0.2); rate = fraction of the "
            "whole training set")
ATTACKS.add("trojan", Trojan, "Trojan: precomputed square trigger added and clipped; rate = fraction of the whole "
            "training set")
ATTACKS.add("trojannn", TrojanNN, "TrojanNN: trigger generated in a mask (apple) to excite 2 penultimate neurons "
            "of a clean model; rate = fraction of the whole training set")
ATTACKS.add("clean_label", CleanLabel, "Clean-label: PGD (8/255, 4 steps) on target-class images + four-corner "
            "checkerboards; rate = fraction of the TARGET CLASS")
ATTACKS.add("sig", SIG, "SIG clean-label sinusoid (delta 40 train / 60 test, f 6); rate = fraction of the TARGET "
            "CLASS")

for _name, _title in {"none": "Standard training", "badnets": "BadNets", "blend_kitty": "Blend-Kitty",
                      "blend_strip": "Blend-Strip", "trojan": "Trojan", "trojannn": "TrojanNN",
                      "clean_label": "Clean-label", "sig": "SIG"}.items():  # display names in tables and reports
    ATTACKS.set_title(_name, _title)


def build_attack(spec: str | dict[str, Any], **settings: Any) -> BackdoorAttack:
    """An attack from a name plus settings, or from a mapping {'name': ..., **settings}."""
    return ATTACKS.build(spec, **settings)

ATTACKS.add("wanet", WaNet, "WaNet: a fixed smooth warp (k 4, s 0.5) + noise mode (cross_ratio 2 x as many other "
            "samples warped with noise, labels kept); rate = fraction of the whole training set (relabelled only)")
ATTACKS.add("issba", ISSBA, "ISSBA: a StegaStamp encoder's sample-specific residual hiding a BCH-coded string "
            "('a'); encoder trained in advml (a CIFAR-10 32x32 one ships); rate = fraction of the whole training set")
ATTACKS.add("low_frequency", LowFrequency, "Low-Frequency: BackdoorBench's universal low-frequency pattern added and "
            "clipped; rate = fraction of the whole training set")
for _name, _title in {"wanet": "WaNet", "issba": "ISSBA", "low_frequency": "Low-frequency"}.items():
    ATTACKS.set_title(_name, _title)

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
