"""Bench-level figures of a transfer grid: success against iterations and against cost (forward-backward passes
per image), one line per method, one panel per combination of the other grid keys."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from advml.bench.spec import BenchSpec, value_word
from advml.utils.figures import pyplot, save_figure

PlotName = Literal["success_vs_iterations", "success_vs_cost"]


def _mean_transfer(success: dict[str, float]) -> float | None:
    """Mean success over the target models (white-box excluded)."""
    values = [v for k, v in success.items() if k != "white_box" and isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def _series(metrics: dict[str, Any], x_axis: PlotName) -> list[tuple[float, float]]:
    """(x, mean transfer success) at each recorded iteration count; x = iterations or passes per image."""
    at, passes = metrics.get("success_at"), metrics.get("passes_at") or {}
    if not isinstance(at, dict):
        return []
    points = []
    for it, success in at.items():
        y = _mean_transfer(success) if isinstance(success, dict) else None
        x = float(it) if x_axis == "success_vs_iterations" else passes.get(it)
        if y is not None and isinstance(x, (int, float)) and x > 0:
            points.append((float(x), y))
    return sorted(points)


def transfer_plot(spec: BenchSpec, rows: list[dict[str, Any]], name: PlotName, path: Path) -> bool:
    """Write one PNG to `path`: a panel per combination of the grid keys other than the method, a line per method;
    False (nothing written) when no finished cell has the data."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    panels: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {}
    for r in rows:
        params, points = r["params"], _series(r["metrics"], name)
        if not points:
            continue
        title = ", ".join(_part(spec, k, v) for k, v in params.items() if k != "method")
        panels.setdefault(title, []).append((spec.label("method", params.get("method", "")), points))
    if not panels:
        return False
    plt = pyplot()
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.4 * nrows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels.items()):
        for label, points in lines:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        if name == "success_vs_cost":
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("iterations" if name == "success_vs_iterations" else "forward-backward passes per image")
        ax.set_ylabel("mean transfer success")
        ax.set_ylim(0, 1)
        ax.set_title(title or spec.name, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return True


def _part(spec: BenchSpec, key: str, value: Any) -> str:
    """'eps (/255) 8' in a panel title; a value with its own display name alone ('targeted', not twice)."""
    own = f"{key}={value_word(value)}" in spec.labels
    return spec.label(key, value) if own else f"{spec.label(key)} {spec.label(key, value)}"
