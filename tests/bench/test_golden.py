"""What a bench cell runs with must not change by accident: a refactor that moves, renames or re-defaults a setting
changes the resolved settings of the cells, and a committed bench then refuses to resume (or, worse, a new cell
differs from the finished ones beside it). Two guards:

- every cell of every preset of every `configs/seed` spec resolves to the settings recorded in
  `golden_cells.json` (a hash per cell, and the whole settings of each preset's first cell to show what moved);
  after an intended change: `ADVML_UPDATE_GOLDEN=1 pytest tests/bench/test_golden.py`, and say so in the commit;
- every committed bench under `results/` that is still being extended resolves, from its own recorded spec, to
  the settings its finished cells recorded, so `advml bench` reuses them; the others are listed as historical,
  each with the change that retired it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import ROOT

from advml.bench.runner import _without_progress, cell_settings
from advml.bench.spec import BenchSpec, load_spec
from advml.bench.store import ResultStore
from advml.config import validate
from advml.experiments import EXPERIMENTS
from advml.provenance import differences

GOLDEN = Path(__file__).with_name("golden_cells.json")
SPECS = sorted((ROOT / "configs" / "seed").glob("*.yaml"))
HISTORICAL = {  # benches whose cells ran with settings today's presets no longer give (their READMEs say which)
    "table1_issba-cpu": "train.amp true, before amp: auto became the presets' default",
    "table2_defense-cpu": "train.amp true, before amp: auto became the presets' default",
    "table2_defense-cpu-attacks": "the SD module's former constant schedule (issue 17), train.amp true",
}


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _resolved(spec: BenchSpec) -> dict[str, Any]:
    out = {}
    for preset in spec.presets:
        cells = spec.cells(preset)
        settings = [cell_settings(spec, preset, c) for c in cells]
        out[preset] = {"first": settings[0], "cells": {c.id: _digest(s) for c, s in zip(cells, settings)}}
    return out


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_seed_cell_resolves_to_its_recorded_settings(path):
    spec = load_spec(path)
    now = _resolved(spec)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if os.environ.get("ADVML_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({**golden, spec.name: now}, indent=1, sort_keys=True) + "\n")
        return
    assert spec.name in golden, f"no golden cells for {spec.name}: ADVML_UPDATE_GOLDEN=1 pytest {__file__}"
    for preset, found in now.items():
        want = golden[spec.name].get(preset)
        assert want is not None, f"{spec.name} --preset {preset}: a new preset; update the golden file"
        moved = differences(want["first"], found["first"])
        changed = sorted(k for k in want["cells"].keys() | found["cells"].keys()
                         if want["cells"].get(k) != found["cells"].get(k))
        assert not changed, (f"{spec.name} --preset {preset}: {len(changed)} cells now run with other settings "
                             f"({', '.join(changed[:3])}); first cell: {moved[:4]}")


def _benches() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "results").glob("*/results.sqlite"))


@pytest.mark.parametrize("folder", _benches(), ids=[p.name for p in _benches()])
def test_committed_benches_resume_with_todays_code(folder):
    store = ResultStore(folder / "results.sqlite", create=False)
    try:
        spec, preset, rows = validate(BenchSpec, store.meta("spec")), store.meta("preset"), store.rows()
    finally:
        store.close()
    cells = {c.id: c for c in spec.cells(preset)}
    experiment = EXPERIMENTS.get(spec.kind)
    stale = []
    for row in rows:
        assert row["id"] in cells, f"{folder.name}: recorded cell {row['id']} is not a cell of its spec"
        before = validate(experiment.settings, row["config"]).model_dump(mode="json")
        diff = differences(_without_progress(before), _without_progress(cell_settings(spec, preset, cells[row["id"]])))
        if diff:
            stale.append(f"{row['id']}: {diff[:2]}")
    if folder.name in HISTORICAL:
        assert stale, f"{folder.name} resumes again: remove it from HISTORICAL"
    else:
        assert not stale, f"{folder.name}: finished cells would be refused ({stale[:2]})"
