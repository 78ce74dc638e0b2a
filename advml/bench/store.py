"""The results table of a bench: one SQLite file, one row per finished cell (parameters, config, metrics, code
version) plus the cells' figures, so that a report can be rendered from it alone."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from advml.errors import DataError, OutputError

LOCK_TIMEOUT = 30.0  # seconds to wait for another process's lock on the table before giving up
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
            self.db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT)
        except sqlite3.Error as e:
            raise DataError(f"{self.path}: not a readable results table ({e})") from None
        if create:  # a table only read (`advml report`) is never written to
            with self._guard("write"):
                self.db.executescript(SCHEMA)

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """sqlite's errors (another schema, a damaged file, a lock held too long, a full disk) as one line."""
        try:
            yield
        except sqlite3.Error as e:
            hint = "; another process holds it locked" if "locked" in str(e) else ""
            error = OutputError if doing == "write" else DataError
            raise error(f"{self.path}: cannot {doing} the results table ({e}){hint}") from None

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value (the spec, the preset) under `key`."""
        with self._guard("write"), self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str) -> Any:
        """A stored JSON value; DataError when absent or damaged."""
        with self._guard("read"):
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise DataError(f"{self.path}: no {key!r} recorded")
        return self._json(row[0], f"meta {key!r}")

    def _json(self, text: Any, what: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError):
            raise DataError(f"{self.path}: damaged results table ({what} is not JSON)") from None

    def add(self, cell_id: str, params: dict[str, Any], config: dict[str, Any], metrics: dict[str, Any],
            seconds: float | None, figures: dict[str, bytes], version: str) -> None:
        """Record one finished cell (replacing an older record of it), in one transaction."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._guard("write"), self.db:
            self.db.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (cell_id, json.dumps(params), json.dumps(config), json.dumps(metrics), seconds,
                             version, stamp))
            self.db.execute("DELETE FROM figures WHERE cell_id = ?", (cell_id,))
            self.db.executemany("INSERT INTO figures VALUES (?, ?, ?)",
                                [(cell_id, name, png) for name, png in figures.items()])

    def ids(self) -> set[str]:
        """The recorded cells."""
        with self._guard("read"):
            return {r[0] for r in self.db.execute("SELECT id FROM cells")}

    def rows(self) -> list[dict[str, Any]]:
        """Every recorded cell as a dict (params, config and metrics decoded, each checked)."""
        with self._guard("read"):
            found = self.db.execute(
                "SELECT id, params, config, metrics, seconds, code_version, finished_at FROM cells").fetchall()
        out = []
        for cid, params, config, metrics, seconds, version, stamp in found:
            row = {"id": cid, "params": self._json(params, f"cell {cid!r} params"),
                   "config": self._json(config, f"cell {cid!r} config"),
                   "metrics": self._json(metrics, f"cell {cid!r} metrics"), "seconds": seconds,
                   "code_version": version, "finished_at": stamp}
            scalar = (str, int, float, bool, type(None))
            ok = (isinstance(cid, str) and isinstance(row["params"], dict)
                  and all(isinstance(v, scalar) or (isinstance(v, dict) and all(  # a grid value with settings
                      isinstance(k, str) and isinstance(x, scalar) for k, x in v.items()))
                      for v in row["params"].values())
                  and isinstance(row["config"], dict) and isinstance(row["metrics"], dict)
                  and (seconds is None or (isinstance(seconds, (int, float)) and math.isfinite(seconds)))
                  and isinstance(version, str) and isinstance(stamp, str))
            if not ok:
                raise DataError(f"{self.path}: damaged results table (cell {cid!r}: a field of the wrong type)")
            out.append(row)
        return out

    def figures(self) -> dict[str, dict[str, bytes]]:
        """cell id -> {figure name: PNG bytes}."""
        out: dict[str, dict[str, bytes]] = {}
        with self._guard("read"):
            found = self.db.execute("SELECT cell_id, name, png FROM figures ORDER BY cell_id, name").fetchall()
        for cid, name, png in found:
            if not (isinstance(cid, str) and isinstance(name, str) and isinstance(png, bytes)):
                raise DataError(f"{self.path}: damaged results table (a figure of cell {cid!r} is not PNG bytes)")
            out.setdefault(cid, {})[name] = png
        return out
