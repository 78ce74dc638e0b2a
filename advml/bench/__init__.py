"""Benchmark grids: specs (`configs/seed/*.yaml`), the runner (in-process or Ray), the results table, reports."""

from advml.bench.report import render_report
from advml.bench.runner import run_bench, run_cell
from advml.bench.spec import BenchSpec, Cell, load_spec
from advml.bench.store import ResultStore

__all__ = ["BenchSpec", "Cell", "ResultStore", "load_spec", "render_report", "run_bench", "run_cell"]
