"""Test-time (evasion) attacks: one iterative l-inf attack whose steps are hooks that methods override."""

from advml.evasion.base import IterativeAttack, Method
from advml.evasion.methods import METHODS, compose, parse

__all__ = ["IterativeAttack", "METHODS", "Method", "compose", "parse"]
