"""The one way advml draws and writes a figure: pyplot on the Agg backend (files only, never a display) and an
atomic save in the format the file's suffix names."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from advml.utils.io import atomic_path


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Write `fig` to `path` atomically (a killed writer leaves no partial file) in the format of its suffix
    (PNG when it has none), then close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    pyplot().close(fig)
    return path
