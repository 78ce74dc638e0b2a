"""`run_bench(spec, preset, out)`: run every unfinished cell of a grid (in-process or as Ray tasks), record
each finished cell in the results table, and render the report. A killed bench resumes: finished cells are
never re-run, an unfinished backdoor cell continues from its checkpoints."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from tqdm import tqdm

from advml.bench.spec import BenchSpec, Cell, Scale
from advml.bench.store import ResultStore, code_version
from advml.config import dump_yaml, load_yaml, validate
from advml.errors import ConfigError, DataError
from advml.experiments import EXPERIMENTS
from advml.provenance import differences
from advml.utils.io import load_json, write_text_atomic
from advml.utils.rundir import RunFolder


def cell_settings(spec: BenchSpec, preset: str, cell: Cell) -> dict[str, Any]:
    """A cell's complete, validated run settings (so a bad grid fails before any work starts)."""
    experiment = EXPERIMENTS.get(spec.kind)
    try:
        settings = experiment.load(None, cell.settings(spec, preset), preset=spec.scale(preset).preset)
    except ConfigError as e:
        raise ConfigError(f"{cell.id}: {e}") from None
    return settings.model_dump(mode="json")


# the code version that finished a cell: a cell recorded later (after a kill, or by a newer checkout resuming the
# bench) keeps the version that ran it, not the recorder's
CODE_FILE = "code.txt"


def run_cell(kind: str, settings: dict[str, Any], folder: str, threads: int | None = None) -> dict[str, Any]:
    """Run one cell into `folder` (the same code as the CLI); returns its metrics. Ray runs this remotely."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    experiment = EXPERIMENTS.get(kind)
    metrics = experiment.run_cell(validate(experiment.settings, settings), Path(folder)).metrics
    write_text_atomic(Path(folder) / CODE_FILE, code_version() + "\n")  # the code that finished it
    return metrics


def _cell_version(folder: Path, fallback: str) -> str:
    """The version in the cell's code.txt, else `fallback` marked as the recorder's (cells older than code.txt)."""
    path = folder / CODE_FILE
    if path.is_file() and not path.is_symlink() and path.stat().st_size < 200:
        text = path.read_text(errors="replace").strip()
        if text and text.isprintable():
            return text
    return f"unrecorded (recorded by {fallback})"


def _finished(folder: Path) -> bool:
    return (folder / "metrics.json").is_file()  # runs write it last


def _without_progress(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_progress(v) for k, v in data.items() if k != "progress"}
    return data


def _check_same(kind: str, folder: Path, settings: dict[str, Any], cell_id: str) -> None:
    """A finished cell is reused only when it ran with this cell's settings (progress bars aside); its config is
    read through today's settings, so a setting added since then counts with its default."""
    experiment = EXPERIMENTS.get(kind)
    recorded = experiment.recorded(folder)
    if recorded is None:
        return
    try:
        before = validate(experiment.settings, recorded).model_dump(mode="json")
    except ConfigError:
        before = recorded
    diff = differences(_without_progress(before), _without_progress(settings))
    if diff:
        raise ConfigError(f"cell {cell_id} in {folder.parent.parent} finished with other settings than the spec "
                          f"now gives ({', '.join(diff[:4])}); delete {folder} to rerun it, or use a new --out")


def _record(store: ResultStore, cell: Cell, folder: Path, figures: list[str], version: str,
            spec_kind: str = "backdoor") -> None:
    metrics = load_json(folder / "metrics.json")
    config = EXPERIMENTS.get(spec_kind).recorded(folder) or {}
    timing = load_json(folder / "timing.json") if (folder / "timing.json").is_file() else {}
    seconds = timing.get("seconds") if isinstance(timing, dict) else None
    if not isinstance(metrics, dict) or not (seconds is None or isinstance(seconds, (int, float))):
        raise DataError(f"{folder}: metrics.json or timing.json is not what a run writes; delete {folder} to rerun "
                        "that cell")
    pngs = {}
    for name in figures:  # plain names (the spec checks them), regular files of the cell folder, PNGs only
        path = folder / name
        if path.is_file() and not path.is_symlink() and path.resolve().parent == folder.resolve():
            data = path.read_bytes()
            if data.startswith(b"\x89PNG\r\n\x1a\n"):
                pngs[name] = data
    store.add(cell.id, cell.params, config, metrics, seconds, pngs, _cell_version(folder, version))


def _local(jobs: list[tuple[Cell, dict[str, Any], Path]], kind: str, done: Callable[[Cell, Path], None],
           progress: bool) -> None:
    for cell, settings, folder in tqdm(jobs, desc="cells", disable=not progress):  # a cut cell's run clears the
        # temp files its killed writers left (advml's own names, in the folder advml made), then resumes
        run_cell(kind, settings, str(folder))
        done(cell, folder)


def _ray(jobs: list[tuple[Cell, dict[str, Any], Path]], kind: str, done: Callable[[Cell, Path], None],
         progress: bool, scale: Scale, address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray is not installed: pip install 'advml[ray]', or run with --ray off") from None
    if not ray.is_initialized():
        # workers import advml from this checkout: put it on their path (a cluster needs it installed)
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")) if p)}}
        ray.init(address=address, runtime_env=env, include_dashboard=False, log_to_driver=progress,
                 **cast(dict[str, Any], {"num_cpus": os.cpu_count()} if address is None else {}))
    task = ray.remote(run_cell).options(num_cpus=scale.cpus, num_gpus=scale.gpus, max_retries=0)
    pending = {task.remote(kind, s, str(f), max(1, int(scale.cpus))): (c, f) for c, s, f in jobs}
    bar = tqdm(total=len(pending), desc="cells (ray)", disable=not progress)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        cell, folder = pending.pop(ready[0])
        ray.get(ready[0])  # re-raises the cell's error
        done(cell, folder)
        bar.update()
    bar.close()


def same_bench(before: BenchSpec, spec: BenchSpec, preset: str) -> bool:
    """Whether two specs give, at `preset`, the same cells with the same run settings and the same table (settings
    compared once resolved, so moving them into a packaged preset is no change)."""
    if before.identity(preset) != spec.identity(preset):
        return False
    return all(cell_settings(before, preset, a) == cell_settings(spec, preset, b)
               for a, b in zip(before.cells(preset), spec.cells(preset)))


def _same_bench(previous: dict[str, Any], spec: BenchSpec, preset: str) -> bool:
    """Whether a folder's recorded spec and preset are `spec` at `preset` (see `same_bench`)."""
    try:
        before = validate(BenchSpec, previous.get("spec", {}))
        return previous.get("preset") == preset and same_bench(before, spec, preset)
    except ConfigError:  # another spec, or one without this preset
        return False


def run_bench(spec: BenchSpec, preset: str, out: str | Path, *, ray: str | None = "off",
              progress: bool = True, only: list[str] | None = None) -> Path:
    """Run the spec's grid at `preset` into `out` (cells/<id>/, results.sqlite, report.md, report.html).

    `ray`: 'off' runs cells one after the other in this process; 'local' starts a local Ray instance; any
    other value is the address of a running Ray cluster."""
    scale = spec.scale(preset)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file, not a folder")
    cells = spec.cells(preset)
    if only:
        unknown = set(only) - {c.id for c in cells}
        if unknown:
            raise ConfigError(f"no cells {sorted(unknown)} in {spec.name}")
        cells = [c for c in cells if c.id in only]
    settings = {c.id: cell_settings(spec, preset, c) for c in cells}  # validate everything first
    lock = RunFolder(out, "bench")
    lock.acquire()  # a second bench into this folder stops here, naming this one
    try:
        _run_bench(spec, preset, out, cells, settings, scale, ray, progress)
    finally:
        lock.release()
    return out


def _run_bench(spec: BenchSpec, preset: str, out: Path, cells: list[Cell], settings: dict[str, dict[str, Any]],
               scale: Scale, ray: str | None, progress: bool) -> None:
    from advml.bench.report import render_report

    previous = out / "spec.yaml"
    record = {"spec": spec.model_dump(mode="json"), "preset": preset}
    if previous.is_file() and not _same_bench(load_yaml(previous), spec, preset):
        raise ConfigError(f"{out} holds a bench of another spec or preset; use a new --out")
    write_text_atomic(previous, dump_yaml(record))
    store = ResultStore(out / "results.sqlite")
    store.set_meta("spec", record["spec"])
    store.set_meta("preset", preset)
    version = code_version()
    recorded = store.ids()
    jobs = []
    for c in cells:
        folder = out / "cells" / c.id
        if _finished(folder):
            _check_same(spec.kind, folder, settings[c.id], c.id)
            if c.id not in recorded:  # finished before a kill, not yet recorded
                _record(store, c, folder, spec.table_at(preset).figures, version, spec.kind)
        else:
            jobs.append((c, settings[c.id], folder))

    def done(cell: Cell, folder: Path) -> None:
        _record(store, cell, folder, spec.table_at(preset).figures, version, spec.kind)

    start = time.perf_counter()
    try:
        if not jobs:
            pass
        elif ray in (None, "off"):
            _local(jobs, spec.kind, done, progress)
        else:
            _ray(jobs, spec.kind, done, progress, scale, None if ray == "local" else ray)
    finally:
        store.close()
    if progress and jobs:
        print(f"{len(jobs)} cell(s) run in {time.perf_counter() - start:.0f} s; "
              f"{len(cells) - len(jobs)} reused", flush=True)
    render_report(out)
