"""docs/architecture.md's import rules, checked on the source: each package imports only the layers below it, a
defense never imports an attack (it sees the untrusted data only) nor an attack a defense, and nothing imports
upwards into the runners. A new import that breaks a rule fails here with the line that does it."""

from __future__ import annotations

import ast

from helpers.paths import ROOT

# layer of each unit (a top-level module or subpackage of advml); a unit may import units of a lower layer only,
# or of its own layer where SAME_LAYER allows it
LAYERS = {
    "advml.errors": 0,
    "advml.registry": 1, "advml.config": 1, "advml.provenance": 1, "advml.stats": 1,
    "advml.utils": 2, "advml.component": 2,
    "advml.data": 3, "advml.models": 3,
    "advml.metrics": 4, "advml.model_cache": 4, "advml.train": 4,
    "advml.evasion": 5, "advml.backdoor": 5,
    "advml.backdoor.attacks": 6, "advml.backdoor.defenses": 6,
    "advml.experiments": 7,
    "advml.bench": 8,
    "advml.cli": 9, "advml.__main__": 10,
    "advml": 0,  # the package's __init__: the version only
}
SAME_LAYER = {("advml.train", "advml.metrics")}  # the trainer evaluates with the metrics
UPWARD_OK = {("advml.backdoor", "advml.backdoor.attacks")}  # the package's __init__ and inspect list the attacks
NEVER = {("advml.backdoor.defenses", "advml.backdoor.attacks"), ("advml.backdoor.attacks", "advml.backdoor.defenses")}


def _unit(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1].startswith("__") and parts[1] != "__main__":
        return "advml"  # from advml import __version__
    if len(parts) > 2 and parts[1] == "backdoor" and parts[2] in ("attacks", "defenses"):
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def _imports() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, 'file:line') for every advml import inside advml/."""
    found = []
    for path in sorted((ROOT / "advml").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" if node.module == "advml" else node.module for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "advml" and _unit(name) != _unit(module):
                    found.append((_unit(module), _unit(name), f"{path.relative_to(ROOT)}:{node.lineno}"))
    return found


def test_every_unit_has_a_layer():
    units = {u for pair in _imports() for u in pair[:2]}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))


def test_imports_go_down_the_layers_only():
    bad = [f"{where}: {a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]})" for a, b, where in _imports()
           if (LAYERS[b] > LAYERS[a] and (a, b) not in UPWARD_OK)
           or (LAYERS[b] == LAYERS[a] and (a, b) not in SAME_LAYER)]
    assert not bad, "\n".join(bad)


def test_defenses_and_attacks_never_import_each_other():
    bad = [f"{where}: {a} imports {b}" for a, b, where in _imports() if (a, b) in NEVER]
    assert not bad, "\n".join(bad)
