"""The results table of a bench: one SQLite file, one row per finished cell (parameters, config, metrics, code
version) plus the cells' figures, so that a report can be rendered from it alone."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from advml.errors import DataError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    id TEXT PRIMARY KEY, params TEXT NOT NULL, config TEXT NOT NULL, metrics TEXT NOT NULL,
    seconds REAL, code_version TEXT NOT NULL, finished_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS figures (
    cell_id TEXT NOT NULL, name TEXT NOT NULL, png BLOB NOT NULL, PRIMARY KEY (cell_id, name));
"""


def code_version() -> str:
    """advml's version plus the git commit it runs from (with '-dirty' for uncommitted changes) when it runs from
    a git checkout of advml; the version alone for an installed package."""
    try:
        version = metadata.version("advml")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[2]  # the folder holding advml/
    git = ["git", "-C", str(root)]
    try:
        top = subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10)
        if top.returncode or Path(top.stdout.strip()).resolve() != root:  # e.g. site-packages inside some repo
            return version
        commit = subprocess.run([*git, "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


class ResultStore:
    """`results.sqlite` of one bench folder."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise DataError(f"{self.path}: no results table (run `advml bench` into that folder first)")
        try:
            self.db = sqlite3.connect(self.path)
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise DataError(f"{self.path}: not a readable results table ({e})") from None

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value (the spec, the preset) under `key`."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str) -> Any:
        """A stored JSON value; DataError when absent."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise DataError(f"{self.path}: no {key!r} recorded")
        return json.loads(row[0])

    def add(self, cell_id: str, params: dict[str, Any], config: dict[str, Any], metrics: dict[str, Any],
            seconds: float | None, figures: dict[str, bytes], version: str) -> None:
        """Record one finished cell (replacing an older record of it), in one transaction."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (cell_id, json.dumps(params), json.dumps(config), json.dumps(metrics), seconds,
                             version, stamp))
            self.db.execute("DELETE FROM figures WHERE cell_id = ?", (cell_id,))
            self.db.executemany("INSERT INTO figures VALUES (?, ?, ?)",
                                [(cell_id, name, png) for name, png in figures.items()])

    def ids(self) -> set[str]:
        """The recorded cells."""
        return {r[0] for r in self.db.execute("SELECT id FROM cells")}

    def rows(self) -> list[dict[str, Any]]:
        """Every recorded cell as a dict (params, config and metrics decoded)."""
        out = []
        for cid, params, config, metrics, seconds, version, stamp in self.db.execute(
                "SELECT id, params, config, metrics, seconds, code_version, finished_at FROM cells"):
            out.append({"id": cid, "params": json.loads(params), "config": json.loads(config),
                        "metrics": json.loads(metrics), "seconds": seconds, "code_version": version,
                        "finished_at": stamp})
        return out

    def figures(self) -> dict[str, dict[str, bytes]]:
        """cell id -> {figure name: PNG bytes}."""
        out: dict[str, dict[str, bytes]] = {}
        for cid, name, png in self.db.execute("SELECT cell_id, name, png FROM figures ORDER BY cell_id, name"):
            out.setdefault(cid, {})[name] = bytes(png)
        return out
