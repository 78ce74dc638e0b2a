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
    return sorted(p for p in RESULTS.iterdir() if p.is_dir() and ((p / "README.md").is_file()
                                                                    or (p / "report.md").is_file()))


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


def _title(folder: Path) -> str:
    for name in ("README.md", "report.md"):
        if (folder / name).is_file():
            title, _ = _split_title((folder / name).read_text())
            if title:
                return title
    return folder.name


def page(folder: Path) -> str:
    """The markdown of one reproduction page."""
    parts = [f"# {_title(folder)}", f"`results/{folder.name}/` — generated from the files of that folder."]
    if (folder / "README.md").is_file():
        _, body = _split_title((folder / "README.md").read_text())
        parts.append(_relink(body))
    if (folder / "report.md").is_file():
        report_title, body = _split_title((folder / "report.md").read_text())
        parts.append(f"## The table (`report.md`, rendered from `results.sqlite`)\n\n**{report_title}**\n\n"
                     + _demote(body))
        files = [f"[report.html]({folder.name}/report.html) (self-contained, figures embedded)"]
        files += [f"`{n}`" for n in ("results.sqlite", "spec.yaml") if (folder / n).is_file()]
        parts.append("Files: " + ", ".join(files) + f". Re-render with `advml report results/{folder.name}`.")
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
            config.nav[i] = {"Results": ["results/index.md", *({_title(f): f"results/{f.name}.md"}
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
    return files
