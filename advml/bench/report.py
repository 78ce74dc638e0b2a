"""Render a bench's report (markdown + a self-contained HTML page) from its results table alone."""

from __future__ import annotations

import base64
import html
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advml.bench.plots import transfer_plot
from advml.bench.spec import BenchSpec, Table, value_word
from advml.bench.store import ResultStore
from advml.config import dump_yaml, validate
from advml.errors import ConfigError, DataError
from advml.stats import paired_difference
from advml.utils.io import write_text_atomic

MISSING = "n/a"  # a cell of the grid that has not finished
ABSENT = "—"  # a finished cell without that metric (e.g. white-box success against the surrogate itself)


def _lookup(metrics: dict[str, Any], path: str) -> Any:
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _fmt(v: Any, percent: bool = False) -> str:
    if v is None:
        return ABSENT
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if percent:
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    if isinstance(v, int):  # counts (a transfer cell's passes per image)
        return f"{v:,}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"


def _label(params: dict[str, Any], keys: list[str]) -> tuple[str | None, ...]:
    return tuple(None if params.get(k) is None else value_word(params[k]) for k in keys)


def _shown(spec: BenchSpec, keys: list[str], values: tuple[Any, ...]) -> list[str]:
    """The display names of a row's or column's grid values."""
    return [spec.label(k, v) for k, v in zip(keys, values)]


@dataclass(frozen=True)
class Spread:
    """A metric over the cells a table averages (`mean_over`, e.g. seeds): mean, sample standard deviation, count."""

    mean: float
    sd: float
    n: int


def _number(v: Any) -> float | None:
    if isinstance(v, Spread):
        return v.mean
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _merge(group: list[dict[str, Any]]) -> dict[str, Any]:
    """Cells' metrics as one: numbers become their Spread, mappings are merged key by key, anything else is the
    first cell's."""
    if len(group) == 1:
        return group[0]
    out: dict[str, Any] = {}
    for key, first in group[0].items():
        found = [m.get(key) for m in group]
        numbers = [_number(v) for v in found]
        if all(v is not None for v in numbers):
            out[key] = Spread(statistics.fmean(numbers), statistics.stdev(numbers), len(numbers))  # type: ignore
        elif all(isinstance(v, dict) for v in found):
            out[key] = _merge(found)  # type: ignore[arg-type]
        else:
            out[key] = first
    return out


def _der(before: dict[str, Any] | None, after: dict[str, Any] | None, acc: str, asr: str) -> float | None:
    """[max(0, ASR drop) - max(0, ACC drop) + 1] / 2 from two cells' metrics; None when a value is missing."""
    if before is None or after is None:
        return None
    values = [_number(_lookup(m, p)) for m in (before, after) for p in (acc, asr)]
    if any(v is None for v in values):
        return None
    acc_b, asr_b, acc_a, asr_a = values
    return (max(0.0, asr_b - asr_a) - max(0.0, acc_b - acc_a) + 1) / 2  # type: ignore[operator]


def build_table(spec: BenchSpec, preset: str, rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The table of the spec's layout: (header, body); every grid row/column combination appears once, then the
    Avg row if the layout asks for it. A cell reads 'ours (paper)' where the spec gives the paper's value."""
    t: Table = spec.table_at(preset)
    cells = spec.cells(preset)
    originals: dict[tuple[str | None, ...], tuple[Any, ...]] = {}
    for c in cells:
        for group in (t.rows, t.columns):
            originals.setdefault(_label(c.params, group), tuple(c.params.get(k) for k in group))
    row_keys = list(dict.fromkeys(_label(c.params, t.rows) for c in cells))
    col_keys = list(dict.fromkeys(_label(c.params, t.columns) for c in cells))
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((_label(r["params"], t.rows), _label(r["params"], t.columns)), []).append(r["metrics"])
    expected: dict[tuple[Any, Any], int] = {}
    for c in cells:
        k = (_label(c.params, t.rows), _label(c.params, t.columns))
        expected[k] = expected.get(k, 0) + 1
    # a table that averages cells (over seeds, say) shows a mean only when every cell of it has finished
    by_label = {k: _merge(g) if t.mean_over else g[-1] for k, g in groups.items()
                if not t.mean_over or len(g) >= expected.get(k, 1)}
    base = _label({k: value_word(v) for k, v in t.der.base.items()}, t.columns) if t.der else None
    # '.*' paths expand to the union of the keys found in that column's finished cells
    columns: list[tuple[tuple[Any, ...], str, str]] = []  # (column key, metric path or "DER", label)
    for ck in col_keys:
        for path, label in t.values.items():
            if path.endswith(".*"):
                prefix = path[:-2]
                keys: dict[str, None] = {}
                for rk in row_keys:
                    found = _lookup(by_label.get((rk, ck), {}), prefix)
                    keys.update(dict.fromkeys(found if isinstance(found, dict) else []))
                models = spec.models_at(preset)
                if models:  # keep the zoo's order
                    keys = dict.fromkeys([m for m in models if m in keys] + list(keys))
                columns += [(ck, f"{prefix}.{k}", k) for k in keys]
            else:
                columns.append((ck, path, label))
        if t.der is not None and ck != base:
            columns.append((ck, "DER", "DER"))
    scale = 100.0 if t.percent else 1.0
    header = [" / ".join(spec.label(k) for k in t.rows)]
    header += [" ".join([*_shown(spec, t.columns, originals.get(ck, ck)), label]).strip() for ck, _, label in columns]
    values: list[list[tuple[Any, float | None]]] = []  # per row and column: (ours, the paper's)
    for rk in row_keys:
        line: list[tuple[Any, float | None]] = []
        for ck, path, _ in columns:
            metrics = by_label.get((rk, ck))
            if path == "DER":
                assert t.der is not None
                ours: Any = _der(by_label.get((rk, base)), metrics, t.der.acc, t.der.asr) if metrics else MISSING
            else:
                ours = MISSING if metrics is None else _lookup(metrics, path)
            paper = t.paper.get(" / ".join(str(w) for w in rk), {}).get(" / ".join(str(w) for w in ck), {})
            line.append((ours, _number(paper.get(path))))
        values.append(line)
    body = [[" / ".join(_shown(spec, t.rows, originals.get(rk, rk)))] +
            [_cell(ours, paper, scale) for ours, paper in line] for rk, line in zip(row_keys, values)]
    words = [" / ".join(str(w) for w in rk) for rk in row_keys]
    averaged = [line for w, line in zip(words, values)
                if t.average is True or (isinstance(t.average, list) and w in t.average)]
    if t.average and averaged:
        avg = ["Avg" if len(averaged) == len(values) else f"Avg ({len(averaged)} rows)"]
        for j in range(len(columns)):
            ours_all = [_number(line[j][0]) for line in averaged]
            papers = [line[j][1] for line in averaged]
            mean = sum(ours_all) / len(ours_all) if all(v is not None for v in ours_all) else MISSING  # type: ignore
            paper_mean = sum(papers) / len(papers) if all(p is not None for p in papers) else None  # type: ignore
            avg.append(_cell(mean, paper_mean, scale))
        body.append(avg)
    return header, body


def _cell(ours: Any, paper: float | None, scale: float) -> str:
    """One table cell: our value (in the table's unit), then the paper's in parentheses where it is known."""
    v: Any = _number(ours)
    if isinstance(ours, int) and not isinstance(ours, bool):
        v = ours  # a count (passes per image) stays an integer
    shown = ours if v is None else v * scale if scale != 1.0 else v
    text = _fmt(shown, percent=scale != 1.0)
    if isinstance(ours, Spread):
        text += f" ± {_fmt(ours.sd * scale, percent=scale != 1.0)}"
    return f"{text} ({_fmt(paper, percent=True)})" if paper is not None else text


def paired_table(rows: list[dict[str, Any]], order: list[str] | None = None,
                 spec: BenchSpec | None = None, base_method: str | None = None
                 ) -> tuple[list[str], list[list[str]]] | None:
    """Transfer cells against their base method (`a+rap` vs `a`; other methods vs `base_method` when given; same
    other parameters) on the same images: success difference per model with its 95 % paired interval and McNemar
    p; None without per-image outcomes."""
    def key(params: dict[str, Any], method: str) -> str:
        return repr(sorted({**params, "method": method}.items()))

    by_key = {key(r["params"], r["params"].get("method", "")): r["metrics"] for r in rows}
    pairs = []
    for r in rows:
        method = r["params"].get("method", "")
        method = method.get("name", "") if isinstance(method, dict) else method  # a method with its options
        base_name = method.split("+")[0] if "+" in method else base_method if method != base_method else None
        base = by_key.get(key(r["params"], base_name)) if base_name else None
        m = r["metrics"]
        if base and _outcomes(m) and _outcomes(base) and m.get("image_ids") == base.get("image_ids"):
            pairs.append((r["params"], base["outcomes"], m["outcomes"]))
    if not pairs:
        return None
    found = dict.fromkeys(k for _, _, o in pairs for k in o)
    rank = {m: i for i, m in enumerate(["white_box", *(order or [])])}  # white-box first, then the zoo's order
    models = sorted(found, key=lambda k: rank.get(k, len(rank)))
    header = ["cell vs its base method"] + [m.replace("white_box", "white-box") for m in models]
    body = []
    show = spec.label if spec is not None else (lambda k, v: str(v))
    for params, a, b in pairs:
        line = [" / ".join([*(show(k, v) for k, v in params.items() if k != "method"),
                            show("method", params["method"])])]
        for name in models:
            if name in a and name in b and len(a[name]) == len(b[name]):
                d = paired_difference(a[name], b[name])
                line.append(f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] p={d['p_mcnemar']:.3g}")
            else:
                line.append(ABSENT)
        body.append(line)
    return header, body


def _outcomes(metrics: dict[str, Any]) -> bool:
    """Whether a cell's per-image outcomes are what a transfer run writes: model -> a string of 0s and 1s."""
    o = metrics.get("outcomes")
    return isinstance(o, dict) and bool(o) and all(isinstance(v, str) and v and set(v) <= {"0", "1"}
                                                   for v in o.values())


def _markdown(title: str, header: list[str], body: list[list[str]]) -> str:
    lines = [f"| {' | '.join(header)} |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += [f"| {' | '.join(r)} |" for r in body]
    return f"## {title}\n\n" + "\n".join(lines) + "\n"


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f'<table class="results"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def table_note(t: Table, spec: BenchSpec | None = None, *, der_shown: bool = True) -> str:
    """What the table's units, paper values, DER and Avg mean (empty for a plain table)."""
    parts = []
    if t.percent:
        parts.append("Values in percent.")
    if t.paper:
        parts.append(f"A cell reads: ours (the paper's). The paper's values: {' '.join(t.paper_source.split())}.")
    if t.der is not None and der_shown:
        parts.append("DER = [max(0, ASR drop) - max(0, ACC drop) + 1] / 2 against the row's no-defense cell "
                     "(BackdoorBench's defense effectiveness rating; higher is better).")
    if t.mean_over:
        parts.append(f"Each cell: mean ± sample standard deviation over {', '.join(t.mean_over)} (shown when all "
                     f"of its cells have finished).")
    if isinstance(t.average, list):
        shown = [spec.label(t.rows[0], w) if spec is not None and len(t.rows) == 1 else w for w in t.average]
        parts.append(f"Avg: the mean over {', '.join(shown)}.")
    return " ".join(parts)


def version_warning(rows: list[dict[str, Any]]) -> str | None:
    """A warning when the finished cells ran different code (or uncommitted code), else None."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["code_version"]] = counts.get(r["code_version"], 0) + 1
    notes = []
    if len(counts) > 1:
        listed = ", ".join(f"{v} ({n} cell{'s' * (n > 1)})" for v, n in sorted(counts.items()))
        notes.append(f"these cells come from {len(counts)} code versions ({listed}); a difference between cells "
                     f"may come from a code change, not only from their settings")
    dirty = sum(n for v, n in counts.items() if v.endswith("-dirty"))
    if dirty:
        notes.append(f"{dirty} cell{'s' * (dirty > 1)} ran with uncommitted changes ('-dirty'), which no commit "
                     f"reproduces")
    return "; ".join(notes) if notes else None


def render_report(folder: str | Path, spec: BenchSpec | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html into `folder` from its results.sqlite; returns both paths. `spec`: a newer
    edition of the recorded spec (same cells and settings) whose title and display names to use; it is recorded."""
    folder = Path(folder)
    store = ResultStore(folder / "results.sqlite", create=False)
    try:
        recorded = validate(BenchSpec, store.meta("spec"), f"{store.path} spec") \
            if isinstance(store.meta("spec"), dict) else None
        preset = store.meta("preset")
        if recorded is None or not isinstance(preset, str):
            raise DataError(f"{store.path}: damaged results table (its spec or preset is not one advml wrote)")
        recorded.scale(preset)
        rows = store.rows()
        figures = store.figures()
        if spec is not None:
            from advml.bench.runner import same_bench

            if not same_bench(recorded, spec, preset):
                raise ConfigError(f"{folder} holds a bench of other cells or settings than spec {spec.name!r} at "
                                  f"preset {preset!r}; its report keeps the recorded spec")
            store.set_meta("spec", spec.model_dump(mode="json"))
            record = {"spec": spec.model_dump(mode="json"), "preset": preset}
            write_text_atomic(folder / "spec.yaml", dump_yaml(record))
        spec = spec or recorded
    finally:
        store.close()
    header, body = build_table(spec, preset, rows)
    title = spec.title or spec.name
    versions = sorted({r["code_version"] for r in rows})
    seconds = sum(r["seconds"] or 0 for r in rows)
    code = versions[0] if len(versions) == 1 else f"{len(versions)} versions (see the warning)" if versions else "n/a"
    done = f"{len(rows)} of {len(spec.cells(preset))} cells finished; {seconds / 60:.1f} min of cell time; " \
           f"code {code}; preset {preset}"
    warning = version_warning(rows)
    md = f"# {title}\n\n{done}\n\n" + (f"> **Warning:** {warning}.\n\n" if warning else "")
    md += _markdown(spec.name, header, body)
    note = table_note(spec.table_at(preset), spec, der_shown=any(h.split()[-1:] == ["DER"] for h in header))
    if note:
        md += f"\n{note}\n"
    paired = paired_table(rows, spec.models_at(preset), spec, spec.table_at(preset).paired_base)
    paired_html = ""
    if paired:
        note = "Success minus the base method's on the same images; 95 % paired (Wald) interval; exact McNemar p."
        md += "\n" + _markdown("paired differences", *paired) + f"\n{note}\n"
        paired_html = f"<h2>paired differences</h2>{_html_table(*paired)}<p>{html.escape(note)}</p>"
    plots = {}
    for name in spec.table_at(preset).plots:
        if transfer_plot(spec, rows, name, folder / f"{name}.png"):
            plots[name] = (folder / f"{name}.png").read_bytes()
    if plots:
        md += "\n## Plots\n\n" + "".join(f"![{name}]({name}.png)\n" for name in plots)
    plots_html = "".join(f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                         f"<figcaption>{name}</figcaption></figure>" for name, png in plots.items())
    if figures:
        md += "\n## Figures\n\n" + "".join(f"- `cells/{cid}/{name}`\n" for cid, fs in figures.items() for name in fs)
    imgs = "".join(
        f'<figure><img alt="{html.escape(cid)} {html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(cid)}: {html.escape(name)}</figcaption>'
        f"</figure>" for cid, fs in figures.items() for name, png in fs.items())
    warning_html = f'<p class="warning"><strong>Warning:</strong> {html.escape(warning)}.</p>' if warning else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:3px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
figure{{display:inline-block;margin:8px}} img{{max-width:420px}}
.warning{{background:#fff3cd;border:1px solid #d39e00;padding:6px 10px}}</style></head>
<body><h1>{html.escape(title)}</h1><p>{html.escape(done)}</p>{warning_html}
<h2>{html.escape(spec.name)}</h2>{_html_table(header, body)}{f"<p>{html.escape(note)}</p>" if note else ""}{paired_html}
{f'<h2>Plots</h2><div class="plots">{plots_html}</div>' if plots_html else ""}
<h2>Figures</h2><div class="figures">{imgs or "<p>none</p>"}</div></body></html>
"""
    md_path, html_path = folder / "report.md", folder / "report.html"
    write_text_atomic(md_path, md)
    write_text_atomic(html_path, page)
    return md_path, html_path
