"""mkdocs hook: one reproduction page per folder of results/ (its README.md, then its report.md rendered from
results.sqlite by `advml report`), generated at build time so that every measured number keeps one home in results/;
each folder's self-contained report.html is published beside its page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def _folders() -> list[Path]:
    """The results folders: the seed tables' benches first, then the other measurements."""
    found = [p for p in RESULTS.iterdir()
             if p.is_dir() and ((p / "README.md").is_file() or (p / "report.md").is_file())]
    return sorted(found, key=lambda p: (not p.name.startswith("table"), p.name))


def _nav_title(folder: Path) -> str:
    """A short menu title: the page title without code marks and parenthesised details."""
    title = re.sub(r"\s*\([^)]*\)", "", _title(folder)).replace("`", "")
    return title.strip() or folder.name


def _split_title(text: str) -> tuple[str | None, str]:
    """('Title', rest) for a text opening with '# Title', else (None, text)."""
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        return lines[0][2:].strip(), "\n".join(lines[1:]).strip()
    return None, text.strip()


def _demote(text: str) -> str:
    """Headings one level down, so that a folder's report sits under its page's title."""
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)


def _relink(text: str) -> str:
    """Links between results folders (`../other/`, `../other/README.md`) become links between their pages."""
    def page_link(m: re.Match[str]) -> str:
        return f"]({m.group(1)}.md)" if (RESULTS / m.group(1)).is_dir() else m.group(0)

    return re.sub(r"\]\(\.\./([\w.+-]+)/(?:README\.md|report\.md)?\)", page_link, text)


def _local(text: str, folder: Path) -> str:
    """Links to the folder's own files: its figures (published beside the page) and its report (the page's table)."""
    def file_link(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "report.md":
            return "](#the-table)"
        return f"]({folder.name}/{name})" if (folder / name).is_file() and name.endswith(".png") else m.group(0)

    return re.sub(r"\]\(([\w.+-]+)\)", file_link, text)


def _admonish(text: str) -> str:
    """A report's '> **Warning:** ...' line becomes a warning box."""
    return re.sub(r"^> \*\*Warning:\*\* (.*)$", lambda m: "!!! warning\n\n    " + m.group(1), text, flags=re.M)


def _title(folder: Path) -> str:
    for name in ("README.md", "report.md"):
        if (folder / name).is_file():
            title, _ = _split_title((folder / name).read_text())
            if title:
                return title
    return folder.name


def page(folder: Path) -> str:
    """The markdown of one reproduction page."""
    parts = ["---\nhide: [toc]\n---",  # wide tables: give them the table of contents' width
             f"# {_title(folder)}", f"Generated from the files of `results/{folder.name}/`."]
    if (folder / "report.md").is_file():  # the table first, then the notes on how it was made and what it says
        report_title, body = _split_title((folder / "report.md").read_text())
        parts.append(f"## The table\n\n**{report_title}** (`report.md`, rendered from `results.sqlite`)\n\n"
                     + _admonish(_demote(_local(body, folder))))
        files = [f"[report.html]({folder.name}/report.html) (self-contained, figures embedded)"]
        files += [f"`{n}`" for n in ("results.sqlite", "spec.yaml") if (folder / n).is_file()]
        parts.append("Files: " + ", ".join(files) + f". Re-render with `advml report results/{folder.name}`.")
    if (folder / "README.md").is_file():
        _, body = _split_title((folder / "README.md").read_text())
        notes = _demote(_relink(_local(body, folder)))
        parts.append(("## Notes\n\n" if (folder / "report.md").is_file() else "") + notes)
    return "\n\n".join(parts) + "\n"


def index(folders: list[Path]) -> str:
    """The markdown of results/index.md."""
    lines = ["# Results", "",
             "Every measured number of advml lives in one folder of `results/` (a bench's `results.sqlite` and the "
             "report rendered from it, and/or a README with the command, the setting and the reading). These pages "
             "are generated from those folders when the site is built.", "",
             "| page | folder |", "| --- | --- |"]
    lines += [f"| [{_title(f)}]({f.name}.md) | `results/{f.name}/` |" for f in folders]
    return "\n".join(lines) + "\n"


def on_config(config: Any, **_: Any) -> Any:
    """Put the generated pages into the nav under 'Results'."""
    for i, item in enumerate(config.nav or []):
        if isinstance(item, dict) and "Results" in item:
            config.nav[i] = {"Results": ["results/index.md", *({_nav_title(f): f"results/{f.name}.md"}
                                                               for f in _folders())]}
    return config


def on_files(files: Files, config: Any, **_: Any) -> Files:
    """Add the generated pages and the reports' HTML to the site's files."""
    folders = _folders()
    files.append(File.generated(config, "results/index.md", content=index(folders)))
    for folder in folders:
        files.append(File.generated(config, f"results/{folder.name}.md", content=page(folder)))
        if (folder / "report.html").is_file():
            files.append(File.generated(config, f"results/{folder.name}/report.html",
                                        content=(folder / "report.html").read_bytes()))
        for png in sorted(folder.glob("*.png")):  # the bench's plots, which its report and notes embed
            files.append(File.generated(config, f"results/{folder.name}/{png.name}", content=png.read_bytes()))
    return files
