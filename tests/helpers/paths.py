"""Paths the tests share: the repository root (wherever a test file sits under tests/)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
