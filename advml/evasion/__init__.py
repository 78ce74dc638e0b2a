"""Test-time (evasion) attacks: one iterative l-inf attack whose steps are hooks that methods override."""

from advml.evasion.base import IterativeAttack

__all__ = ["IterativeAttack"]
