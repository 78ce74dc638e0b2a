"""The bench runner: seed specs at smoke scale, resumability after SIGKILL, reports from the results table alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.paths import ROOT

from advml.bench import load_spec, render_report, run_bench
from advml.bench.report import MISSING, build_table, paired_table
from advml.bench.store import ResultStore, code_version
from advml.errors import ConfigError, DataError

SEED = ROOT / "configs" / "seed"
SPECS = sorted(p.stem for p in SEED.glob("*.yaml"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVML_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _table(folder: Path) -> tuple[list[str], list[list[str]]]:
    store = ResultStore(folder / "results.sqlite", create=False)
    try:
        spec = load_spec_from_store(store)
        return build_table(spec, store.meta("preset"), store.rows())
    finally:
        store.close()


def load_spec_from_store(store: ResultStore):
    from advml.bench.spec import BenchSpec

    return BenchSpec.model_validate(store.meta("spec"))


@pytest.mark.parametrize("name", SPECS)
def test_seed_specs_are_valid_with_three_scales(name):
    spec = load_spec(SEED / f"{name}.yaml")
    assert {"smoke", "cpu", "paper"} <= set(spec.presets)
    for preset in spec.presets:
        assert spec.cells(preset), preset


def test_the_regime_smoke_bench_reports_cost_and_plots(tmp_path, cache):
    """Each cell's passes per image are the ideal counts (MI-TI-DI 1 per iteration, PGN 2 per neighbour, RAP-LS
    1 + K after its late start), and both plots are written and embedded."""
    spec = load_spec(SEED / "table3_regime.yaml")
    out = run_bench(spec, "smoke", tmp_path / "r", progress=False)
    header, body = _table(out)
    assert header[-1] == "passes" and [r[-1] for r in body] == ["3", "8", "7"]  # 3 x 1; 2 x 2 x 2; 1 + 2 x 3
    assert [r[0].split(" / ")[-1] for r in body] == ["MI-TI-DI", "PGN (10 it)", "+ RAP-LS, eps_n = eps"]
    for name in ("success_vs_iterations", "success_vs_cost"):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert f"![{name}]({name}.png)" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().count('alt="success_vs_') == 2


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("attacks", (11, 6)), ("table1_issba", (4, 5)), ("table3_rap", (3, 3)),
                                        ("table2_defense", (2, 13)), ("fct_detection", (2, 7))])
def test_smoke_tables_have_their_shape_and_no_missing_cell(name, shape, tmp_path, cache):
    spec = load_spec(SEED / f"{name}.yaml")
    out = run_bench(spec, "smoke", tmp_path / name, progress=False)
    header, body = _table(out)
    assert (len(body), len(header)) == shape
    assert all(MISSING not in row for row in body)
    md, _, paired = (out / "report.md").read_text().partition("## paired differences")
    assert md.count("\n| ") == shape[0] + 2  # header, rule and rows
    if name == "table3_rap":  # +rap and +rap-ls against mi-ti-di on the same images: the rates' difference
        lines = [r.split(" | ") for r in paired.splitlines() if r.startswith("| resnet18")]
        paired_header = [h.strip(" |") for h in paired.split("\n| ")[1].split(" | ")]
        assert [r[0] for r in lines] == ["| resnet18_narrow / MI-TI-DI + RAP", "| resnet18_narrow / MI-TI-DI + RAP-LS"]
        assert paired_header[1:] == header[1:]  # white-box, then the target, as in the main table
        rate = {r[0]: [float(v) for v in r[1:]] for r in body}
        for r, method in zip(lines, ["MI-TI-DI + RAP", "MI-TI-DI + RAP-LS"]):
            diffs = [float(v.split(" [")[0]) for v in r[1:]]
            expected = [b - a for a, b in zip(rate["resnet18_narrow / MI-TI-DI"], rate[f"resnet18_narrow / {method}"])]
            assert diffs == pytest.approx(expected, abs=2e-3)
    else:
        assert not paired
    n = len(spec.cells("smoke"))
    assert f"{n} of {n} cells finished" in md
    if name == "table1_issba":  # BA of standard training and ISSBA's PSNR land in their columns
        row = {r[0]: r for r in body}
        assert header[1:] == ["BA", "ASR", "PSNR (dB)", "l-inf"]
        assert row["Standard training"][2] == "—" and float(row["ISSBA"][3]) > 20


def test_paired_table_matches_rows_to_their_base_method_on_the_same_images():
    def row(method, outcomes, ids=(3, 5, 7, 9)):
        return {"params": {"surrogate": "s", "method": method},
                "metrics": {"outcomes": outcomes, "image_ids": list(ids)}}

    rows = [row("mi+rap", {"t": "0111", "white_box": "1111"}), row("mi", {"white_box": "1110", "t": "0011"}),
            row("mi+rap-ls", {"t": "0000", "white_box": "1111"}, ids=(1, 2, 3, 4)), row("di+rap", {"t": "1111"})]
    header, body = paired_table(rows)  # rap-ls ran on other images, di+rap has no base: neither is paired
    assert header == ["cell vs its base method", "white-box", "t"] and len(body) == 1
    assert body[0][0] == "s / mi+rap" and body[0][1].startswith("+0.250 [") and body[0][2].startswith("+0.250 [")
    assert paired_table(rows, ["u", "t"])[0] == header  # the zoo's order; white-box always first
    assert paired_table([row("mi", {"a": "0", "b": "1"}), row("mi+rap", {"a": "1", "b": "1"})],
                        ["b", "a"])[0][1:] == ["b", "a"]
    assert paired_table([row("mi", {"t": "0"})]) is None
    spec = load_spec(SEED / "table3_rap.yaml")  # display names, for every paired row
    two = [row("mi-ti-di", {"t": "01"}, (1, 2)), row("mi-ti-di+rap", {"t": "11"}, (1, 2)),
           row("mi-ti-di+rap-ls", {"t": "00"}, (1, 2))]
    assert [r[0] for r in paired_table(two, spec=spec)[1]] == ["s / MI-TI-DI + RAP", "s / MI-TI-DI + RAP-LS"]


def test_report_names_come_from_the_registries_and_the_spec_and_mixed_code_is_flagged(tmp_path):
    from advml.bench.report import version_warning

    spec = load_spec(SEED / "table2_defense.yaml")
    rows = [{"params": c.params, "metrics": {"clean_acc": 0.5, "asr": 0.25}} for c in spec.cells("smoke")]
    header, body = build_table(spec, "smoke", rows)
    assert header[:3] == ["attack", "No defense ACC", "No defense ASR"] and "D-BR ASR" in header
    assert [r[0] for r in body] == ["BadNets all2one", "Blend-Kitty"]  # the spec's label, the registry's title
    assert spec.label("seed", 3) == "3" and spec.label("defense.name", "no-such") == "no-such"
    assert version_warning([{"code_version": "0.1.0+abc"}] * 2) is None
    mixed = version_warning([{"code_version": "0.1.0+abc"}, {"code_version": "0.1.0+def-dirty"}])
    assert "2 code versions" in mixed and "1 cell ran with uncommitted changes" in mixed
    # a newer edition of the spec re-labels a finished bench; another bench is refused
    store = ResultStore(tmp_path / "results.sqlite")
    store.set_meta("spec", {**spec.model_dump(mode="json"), "labels": {}})
    store.set_meta("preset", "smoke")
    for c, r in zip(spec.cells("smoke"), rows):
        store.add(c.id, c.params, {}, r["metrics"], 1.0, {}, "0.1.0+abc" if c.params["attack.name"] == "badnets"
                  else "0.1.0+def")
    store.close()
    md = render_report(tmp_path)[0].read_text()
    assert "| badnets |" not in md and "| BadNets |" in md and "**Warning:** these cells come from 2 code" in md
    assert "| BadNets all2one |" in render_report(tmp_path, spec)[0].read_text()
    assert "| BadNets all2one |" in render_report(tmp_path)[0].read_text()  # recorded
    with pytest.raises(ConfigError, match="other cells or settings"):
        render_report(tmp_path, load_spec(SEED / "table1_issba.yaml"))


def test_a_killed_bench_resumes_without_rerunning_finished_cells(tmp_path, cache):
    spec = SEED / "table3_rap.yaml"
    out = tmp_path / "bench"
    env = {**os.environ, "ADVML_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "advml", "bench", str(spec), "--preset", "smoke", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("cells/*/metrics.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # kill as soon as the first cell has finished
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cells/*/metrics.json")}
    assert 1 <= len(finished) < 3, finished
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    after = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cells/*/metrics.json")}
    assert len(after) == 3 and all(after[k] == v for k, v in finished.items())  # not re-run
    header, body = _table(out)
    assert len(body) == 3 and all(MISSING not in r for r in body)
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 3
    assert not list(out.rglob("*.tmp"))


def test_report_renders_from_the_results_table_alone(tmp_path, cache):
    out = run_bench(load_spec(SEED / "table3_rap.yaml"), "smoke", tmp_path / "b", progress=False)
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    shutil.rmtree(out / "cells")  # the run folders are gone: the table must be enough
    (out / "report.md").unlink()
    (out / "report.html").unlink()
    render_report(out)
    assert (out / "report.md").read_text() == md and (out / "report.html").read_text() == html
    assert html.count("data:image/png;base64,") == 3  # the heat-maps travel inside the page
    assert "code 0.1.0" in md


def test_a_cell_recorded_later_keeps_the_code_version_that_ran_it(tmp_path, cache):
    """A finished cell recorded by a later process (after a kill, or a newer checkout resuming the bench) is recorded
    with the version in its code.txt, not the recorder's; a cell without one says so."""
    spec = load_spec(SEED / "table3_rap.yaml")
    cells = [c.id for c in spec.cells("smoke")][:2]
    out = run_bench(spec, "smoke", tmp_path / "b", progress=False, only=cells)
    assert (out / "cells" / cells[0] / "code.txt").read_text().strip() == code_version()
    (out / "cells" / cells[0] / "code.txt").write_text("0.1.0+0123456789ab\n")  # as if an older checkout ran it
    (out / "cells" / cells[1] / "code.txt").unlink()  # as a cell from before code.txt
    (out / "results.sqlite").unlink()
    run_bench(spec, "smoke", out, progress=False, only=cells)
    with sqlite3.connect(out / "results.sqlite") as db:
        versions = dict(db.execute("SELECT id, code_version FROM cells").fetchall())
    assert versions == {cells[0]: "0.1.0+0123456789ab", cells[1]: f"unrecorded (recorded by {code_version()})"}


def test_partial_bench_shows_missing_cells_and_bad_requests_fail_before_work(tmp_path, cache):
    spec = load_spec(SEED / "table3_rap.yaml")
    first = spec.cells("smoke")[0].id
    out = run_bench(spec, "smoke", tmp_path / "b", progress=False, only=[first])
    header, body = _table(out)
    assert [r.count(MISSING) for r in body] == [0, 2, 2]
    assert list(spec.presets)[:3] == ["smoke", "cpu", "cpu-strong"]
    with pytest.raises(ConfigError, match=f"no preset 'huge'; valid: {', '.join(spec.presets)}$"):
        run_bench(spec, "huge", tmp_path / "c")
    bad = spec.model_copy(update={"grid": {**spec.grid, "method": ["mi-ti-dj"]}})
    with pytest.raises(ConfigError, match="mi-ti-dj|dj"):
        run_bench(bad, "cpu", tmp_path / "d")
    assert not (tmp_path / "d").exists()
    with pytest.raises(ConfigError, match="another spec or preset"):
        run_bench(spec, "cpu", out)
    smoke = spec.presets["smoke"]
    grown = spec.model_copy(update={"title": "renamed", "presets": {  # a new preset, other scheduling hints
        **spec.presets, "smoke": smoke.model_copy(update={"hours": 9.0}), "extra": spec.presets["cpu"]}})
    run_bench(grown, "smoke", out, progress=False, only=[first])
    changed = spec.model_copy(update={"presets": {**spec.presets, "smoke": smoke.model_copy(
        update={"settings": {**smoke.settings, "seed": 7}})}})
    with pytest.raises(ConfigError, match="another spec or preset"):
        run_bench(changed, "smoke", out, only=[first])
    config = out / "cells" / first / "config.yaml"
    text = config.read_text()
    assert "pretrained: false\n" in text
    config.write_text(text.replace("pretrained: false\n", ""))  # a setting added since, at its default: same cell
    run_bench(spec, "smoke", out, progress=False, only=[first])
    config.write_text(text.replace("iters: 3", "iters: 4"))
    with pytest.raises(ConfigError, match=f"cell {first} .* other settings"):
        run_bench(spec, "smoke", out, progress=False, only=[first])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="existing file"):
        run_bench(spec, "smoke", tmp_path / "file")
    with pytest.raises(DataError, match="no results table"):
        render_report(tmp_path / "nothing")


def test_spec_errors_name_the_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nkind: backdoor\ngrid: {attack.name: [badnets]}\npresets: {smoke: {}}\n"
                    "table: {rows: [attack.name], values: {clean_acc: ACC}}\ntitel: typo\n")
    with pytest.raises(ConfigError, match="titel.*did you mean 'title'"):
        load_spec(path)
    path.write_text("name: x\nkind: backdoor\ngrid: {attack.name: []}\npresets: {smoke: {}}\n"
                    "table: {rows: [attack.name], values: {clean_acc: ACC}}\n")
    with pytest.raises(ConfigError, match="at least one value"):
        load_spec(path)


def test_cli_only_takes_repeated_and_comma_separated_ids(tmp_path):
    from typer.testing import CliRunner

    from advml.cli import app

    args = ["bench", str(SEED / "table3_rap.yaml"), "--preset", "smoke", "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, [*args, "--only", "a,b", "--only", "c"])
    assert r.exit_code == 2 and "['a', 'b', 'c']" in r.output  # every id reaches the check, none is dropped
    assert not (tmp_path / "o").exists()


def test_cell_settings_merge_preset_overrides_and_grid_values():
    spec = load_spec(SEED / "table1_issba.yaml")
    cells = {c.params["attack.name"]: c for c in spec.cells("paper")}
    assert cells["badnets"].settings(spec, "paper")["attack"] == {"name": "badnets", "size": 21}
    assert cells["blend_kitty"].settings(spec, "paper")["attack"] == {"name": "blend_kitty"}
    t3 = load_spec(SEED / "table3_rap.yaml")
    c = t3.cells("gpu")[0]
    assert c.settings(t3, "gpu")["targets"] == ["cnn_small", "vgg16_bn", "mobilenet_v2"]
    assert len({c.id for c in t3.cells("gpu")}) == len(t3.cells("gpu")) == 18
    cpu = t3.cells("cpu")  # the cpu scale: one surrogate, the zoo's other family as the only target
    assert cpu[0].settings(t3, "cpu")["targets"] == ["cnn_small"] and len(cpu) == 9
    t2 = load_spec(SEED / "table2_defense.yaml")  # a scale with its own grid, overrides and table layout
    other = {c.params["attack.name"]: c for c in t2.cells("cpu-attacks")}
    assert {c.params["defense.name"] for c in other.values()} == {"d-br"} and "badnets" not in other
    assert other["sig"].settings(t2, "cpu-attacks")["attack"] == {"name": "sig", "rate": 1.0}
    assert "asr_before" in t2.table_at("cpu-attacks").values and "asr_before" not in t2.table_at("cpu").values
    header, body = build_table(t2, "cpu-attacks", [{"params": other["sig"].params, "metrics": {
        "clean_acc_before": 0.6, "asr_before": 0.9, "clean_acc": 0.58, "asr": 0.02}}])
    assert header[1:3] == ["D-BR ACC before", "D-BR ASR before"]
    assert body[[r[0] for r in body].index("SIG")][1:5] == ["0.600", "0.900", "0.580", "0.020"]


def test_the_paper_layout_groups_defenses_with_der_paper_values_and_an_average(tmp_path):
    """table 2's cpu-full layout: attacks given with their settings as grid values, ACC / ASR per defense in percent
    with the paper's value beside ours, BackdoorBench's DER against the row's no-defense cell, an Avg row."""
    from advml.bench.spec import value_word

    t2 = load_spec(SEED / "table2_defense.yaml")
    cells = t2.cells("cpu-full")
    assert "attack.name" not in cells[0].params and len(cells) == 60  # the spec's key removed by the preset
    assert value_word({"name": "badnets", "mode": "all2all"}) == "badnets(mode=all2all)"
    assert value_word({"name": "sig"}) == value_word("sig") == "sig"
    by = {(value_word(c.params["attack"]), c.params["defense.name"]): c for c in cells}
    assert by["sig", "none"].settings(t2, "cpu-full")["attack"] == {"name": "sig", "rate": 1.0}
    assert by["wanet", "d-br"].settings(t2, "cpu-full")["train"]["rotation"] == 10
    assert "train" not in by["trojan", "d-br"].settings(t2, "cpu-full")
    assert len({c.id for c in cells}) == 60 and by["badnets(mode=all2all)", "none"].id.startswith(
        "none_badnets-mode-all2all-")
    metrics = {("badnets(pattern=ebd_grid)", "none"): (0.90, 1.00), ("badnets(pattern=ebd_grid)", "d-br"): (0.88, 0.01),
               ("badnets(mode=all2all)", "none"): (0.92, 0.80), ("badnets(mode=all2all)", "d-br"): (0.93, 0.90),
               ("wanet", "none"): (0.91, 0.95)}
    rows = [{"params": by[k].params, "metrics": {"clean_acc": a, "asr": r}} for k, (a, r) in metrics.items()]
    header, body = build_table(t2, "cpu-full", rows)
    assert header[:6] == ["attack", "No defense ACC", "No defense ASR", "D-BR ACC", "D-BR ASR", "D-BR DER"]
    line = {r[0]: r for r in body}
    # DER = [max(0, 1.00 - 0.01) - max(0, 0.90 - 0.88) + 1] / 2 = 0.985; all2all: ASR up, ACC up -> 0.5
    assert line["BadNets all2one"][1:6] == ["90.0 (91.6)", "100.0 (100.0)", "88.0 (92.8)", "1.00 (0.40)", "98.5"]
    assert line["BadNets all2all"][3:6] == ["93.0 (92.6)", "90.0 (0.56)", "50.0"]
    assert line["WaNet"][1:4] == ["91.0", "95.0", MISSING] and line["Trojan"][1] == f"{MISSING} (91.9)"
    avg = body[-1]
    assert avg[0] == "Avg (7 rows)" and avg[1] == f"{MISSING} (92.5)" and body[-2][0] == "Low-frequency"
    # the paper's D-ST average over its seven attacks: 91.66 / 1.21
    assert avg[header.index("D-ST ACC")] == f"{MISSING} (91.7)" and avg[header.index("D-ST ASR")] == f"{MISSING} (1.21)"
    store = ResultStore(tmp_path / "results.sqlite")
    store.set_meta("spec", t2.model_dump(mode="json"))
    store.set_meta("preset", "cpu-full")
    for r in rows:
        c = next(c for c in cells if c.params == r["params"])
        store.add(c.id, c.params, {}, r["metrics"], 1.0, {}, "0.1.0+abc")
    store.close()
    md = render_report(tmp_path)[0].read_text()
    assert "A cell reads: ours (the paper's)" in md and "DER = [max(0, ASR drop)" in md
    from advml.bench.report import table_note

    assert "DER" not in table_note(t2.table_at("cpu-full"), t2, der_shown=False)  # a table of no-defense cells only
    assert "Avg: the mean over BadNets all2one, BadNets all2all, Trojan, Blend-Strip, Blend-Kitty, SIG, CL." in md
    with pytest.raises(ConfigError):
        load_spec_text(tmp_path, "table: {rows: [attack], values: {asr: ASR}, der: {}}")


def test_a_table_averaged_over_seeds_shows_mean_and_sd_once_every_seed_finished():
    t1 = load_spec(SEED / "table1_issba.yaml")
    cells = t1.cells("cpu-full")
    assert len(cells) == 12 and {c.params["seed"] for c in cells} == {0, 1, 2}
    rows = [{"params": c.params, "metrics": {"clean_acc": 0.90 + 0.01 * c.params["seed"], "asr": 0.5, "psnr": None}}
            for c in cells if (c.params["attack.name"], c.params["seed"]) != ("issba", 2)]
    header, body = build_table(t1, "cpu-full", rows)
    line = {r[0]: r for r in body}
    assert line["BadNets"][1:4] == ["0.910 ± 0.010", "0.500 ± 0.000", "—"]
    assert line["ISSBA"][1] == MISSING  # two of its three seeds: no mean yet


def load_spec_text(tmp_path, table: str):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nkind: backdoor\ngrid: {{attack.name: [badnets]}}\npresets: {{smoke: {{}}}}\n{table}\n")
    return load_spec(path)


@pytest.mark.slow
def test_ray_runs_cells_as_tasks_with_the_same_results(tmp_path, cache):
    ray = pytest.importorskip("ray")
    spec = load_spec(SEED / "table3_rap.yaml")
    local = run_bench(spec, "smoke", tmp_path / "local", progress=False)
    try:
        remote = run_bench(spec, "smoke", tmp_path / "ray", progress=False, ray="local")
    finally:
        ray.shutdown()
    for cell in spec.cells("smoke"):
        a = json.loads((local / "cells" / cell.id / "metrics.json").read_text())
        b = json.loads((remote / "cells" / cell.id / "metrics.json").read_text())
        assert a == b


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="Debian's chromium is not installed")
def test_html_report_opens_in_headless_chromium(tmp_path, cache):
    out = run_bench(load_spec(SEED / "table3_rap.yaml"), "smoke", tmp_path / "b", progress=False)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('<table class="results">') == 2 and dom.count("<img") == 3  # the table, paired differences
    assert dom.count("<tr>") == (1 + 3) + (1 + 2)


def test_paired_base_compares_every_other_method_with_it():
    """`table.paired_base`: methods without a '+' base are paired with it on the same images; '+' cells keep
    their own base; the base itself gets no row."""
    from advml.bench.report import paired_table

    def row(method, outcomes):
        return {"params": {"method": method}, "metrics": {"image_ids": [0, 1, 2, 3], "outcomes": {"m": outcomes}}}

    rows = [row("mi-ti-di", "0011"), row("mi-pgn", "0111"), row("mi-ti-di-si", "1111"),
            row("mi-ti-di-si+rap", "0000")]
    header, body = paired_table(rows, base_method="mi-ti-di")
    assert [r[0] for r in body] == ["mi-pgn", "mi-ti-di-si", "mi-ti-di-si+rap"]
    assert [r[1].split(" ")[0] for r in body] == ["+0.250", "+0.500", "-1.000"]  # the last vs mi-ti-di-si
    _, plain = paired_table(rows)
    assert [r[0] for r in plain] == ["mi-ti-di-si+rap"]
