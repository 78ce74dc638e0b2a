"""Backdoor attacks, poisoned datasets and triggers."""

from advml.backdoor.attacks import ATTACKS, ISSBA, BackdoorAttack, BadNets, build_attack
from advml.backdoor.poisoned import PoisonedDataset
from advml.backdoor.triggers import MaskTrigger, Trigger

__all__ = ["ATTACKS", "ISSBA", "BackdoorAttack", "BadNets", "MaskTrigger", "PoisonedDataset", "Trigger", "build_attack"]
