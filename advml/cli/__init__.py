"""The `advml` command line: a thin layer over the Python API (see README). Each module adds its commands to
`app`; the import order is the order of `advml --help`."""

from __future__ import annotations

import typer

# isort: off
from advml.cli.app import app
from advml.cli import listing, runs, inspect, bench  # noqa: F401  (they register their commands)
# isort: on


def main() -> None:
    """Entry point of the `advml` command."""
    import logging

    handler = logging.StreamHandler()  # advml's own notes (e.g. the precision chosen) on stderr, one line each
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("advml")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    app()


__all__ = ["app", "main", "typer"]
