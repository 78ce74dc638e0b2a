"""mkdocs hook: a line `::settings:: advml.module.SettingsClass` in a page becomes the table of that pydantic
settings class (key, default, description), read from the code so that the docs never drift from it."""

from __future__ import annotations

import importlib
import re
from typing import Any

MARKER = re.compile(r"^::settings:: *([\w.]+) *$", re.M)


def _default(field: Any) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    text = f"{value:.6g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)
    return "`" + text.replace("|", "\\|") + "`"


def settings_table(path: str) -> str:
    """The markdown table of one settings class."""
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    rows = ["| setting | default | meaning |", "| --- | --- | --- |"]
    for key, field in cls.model_fields.items():
        doc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_default(field)} | {doc} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace every settings marker of a page by its table."""
    return MARKER.sub(lambda m: settings_table(m.group(1)), markdown)
