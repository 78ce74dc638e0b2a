"""docs/extending.md's three examples (a new attack, defense and transfer method) run exactly as written."""

from __future__ import annotations

import re

import pytest
from helpers.paths import ROOT

from advml.backdoor.attacks import ATTACKS
from advml.backdoor.defenses import DEFENSES
from advml.evasion.methods import METHODS

GUIDE = ROOT / "docs" / "extending.md"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)


@pytest.fixture
def registries():
    """The registries as they were: an example's entry is gone again after its test."""
    saved = [(r, dict(r._items), dict(r._help), dict(r._titles)) for r in (ATTACKS, DEFENSES, METHODS)]
    yield
    for r, items, help_, titles in saved:
        r._items, r._help, r._titles = items, help_, titles


def test_the_guide_has_one_example_per_registry():
    assert len(BLOCKS) == 3
    assert ["@ATTACKS.register" in BLOCKS[0], "@DEFENSES.register" in BLOCKS[1], "@METHODS.register" in BLOCKS[2]] \
        == [True, True, True]


@pytest.mark.parametrize("index,name,registry", [(0, "grey_square", ATTACKS), (1, "loss_trim", DEFENSES),
                                                 (2, "noise", METHODS)])
def test_each_example_registers_its_entry_and_runs(index, name, registry, registries, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path / "cache"))
    assert name not in registry
    exec(compile(BLOCKS[index], f"{GUIDE}:block{index + 1}", "exec"), {"OUT": tmp_path, "__name__": "example"})
    assert name in registry and registry.describe()[-1][0] == name and registry.describe()[-1][1]
    if isinstance(registry.get(name), type):
        assert registry.get(name).name == name  # the decorator gave the class its name
