"""`advml bench | report`: grids of runs and their reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from advml.cli.app import app, errors


@app.command()
@errors
def bench(
    spec: Annotated[Path, typer.Argument(help="a bench spec, e.g. configs/seed/table2_defense.yaml")],
    preset: Annotated[str, typer.Option(help="the spec's scale: smoke, cpu, paper (or others it defines)")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="bench folder (default runs/bench/<spec>-<preset>)")] = None,
    ray: Annotated[str, typer.Option(help="'off' (cells in this process), 'local' (a local Ray instance) or the "
                                          "address of a Ray cluster")] = "off",
    only: Annotated[list[str] | None, typer.Option(help="cell ids to run: comma-separated and/or repeated")] = None,
) -> None:
    """Run a grid of runs (resumable), collect results.sqlite, render report.md and report.html."""
    from advml.bench import load_spec, run_bench

    s = load_spec(spec)
    folder = run_bench(s, preset, out or Path("runs/bench") / f"{s.name}-{preset}", ray=ray,
                       only=[c for o in only for c in o.split(",") if c] if only else None)
    typer.echo((folder / "report.md").read_text())
    typer.echo(f"wrote {folder / 'report.html'}")


@app.command()
@errors
def report(
    folder: Annotated[Path, typer.Argument(help="a bench folder holding results.sqlite")],
    spec: Annotated[Path | None, typer.Option(help="a newer edition of the bench's spec (same cells and settings): "
                                                   "its title and display names are used and recorded")] = None,
) -> None:
    """Re-render report.md and report.html of a bench from its results table alone."""
    from advml.bench import load_spec, render_report

    md, page = render_report(folder, load_spec(spec) if spec else None)
    typer.echo(md.read_text())
    typer.echo(f"wrote {page}")
