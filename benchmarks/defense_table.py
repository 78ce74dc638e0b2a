"""The D-ST paper's table: attacks x defenses (no defense, Baseline1, Baseline2, D-ST, D-BR), clean accuracy
and ASR, plus the SD module's detection quality — every cell an ordinary `run_backdoor` run folder.

Usage: ADVML_DATA_DIR=../shared/data python benchmarks/defense_table.py [--preset defense_cpu]
       [--attacks badnets,blend_kitty] [--defenses d-br,d-st,baseline1,baseline2] [--out runs/defense_table]
       [--set KEY=VALUE ...]
Finished cells are reused (delete a folder to rerun it); a killed cell resumes from its checkpoints.
"No defense" is the D-BR run's backdoored model (`clean_acc_before`, `asr_before`), or its own run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from advml.config import deep_merge, parse_assignments
from advml.experiments import load_settings, run_backdoor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="defense_cpu")
    ap.add_argument("--attacks", default="badnets,blend_kitty")
    ap.add_argument("--defenses", default="d-br,d-st,baseline1,baseline2")
    ap.add_argument("--out", default="runs/defense_table")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE for every cell")
    ap.add_argument("--no-run", action="store_true", help="only render the finished cells")
    args = ap.parse_args()
    extra = parse_assignments(args.sets)
    cells: dict[tuple[str, str], dict] = {}
    for attack in args.attacks.split(","):
        for defense in args.defenses.split(","):
            out = Path(args.out) / attack / defense
            if (out / "metrics.json").is_file():
                cells[attack, defense] = json.loads((out / "metrics.json").read_text())
            elif args.no_run:
                cells[attack, defense] = {}
                continue
            else:
                settings = load_settings(None, deep_merge({"attack": {"name": attack}, "defense": {"name": defense},
                                                           "train": {"progress": False}}, extra), preset=args.preset)
                cells[attack, defense] = run_backdoor(settings, out, resume=out.is_dir()).metrics
            m = cells[attack, defense]
            print(json.dumps({"attack": attack, "defense": defense,
                              **{k: m.get(k) for k in ("clean_acc", "asr", "clean_acc_before", "asr_before",
                                                       "detect_precision", "detect_recall",
                                                       "clean_split_poison_rate")}}), flush=True)
    defenses = args.defenses.split(",")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for cell in cells.values():  # a missing cell (--no-run) shows as n/a
        cell.setdefault("clean_acc", None)
        cell.setdefault("asr", None)
    print("\n| attack | no defense ACC | ASR | " + " | ".join(f"{d} ACC | ASR" for d in defenses) + " |")
    print("| --- " * (3 + 2 * len(defenses)) + "|")
    for attack in args.attacks.split(","):
        before = next((cells[attack, d] for d in defenses if "clean_acc_before" in cells[attack, d]), None)
        if "none" in defenses:
            base = (cells[attack, "none"].get("clean_acc"), cells[attack, "none"].get("asr"))
        else:
            base = (before["clean_acc_before"], before["asr_before"]) if before else (None, None)
        row = [fmt(base[0]), fmt(base[1])] + [fmt(cells[attack, d][k]) for d in defenses for k in ("clean_acc", "asr")]
        print(f"| {attack} | " + " | ".join(row) + " |")
    print("\n| attack | defense | D_p precision | D_p recall | D_c poisoned |")
    print("| --- | --- | ---: | ---: | ---: |")
    for (attack, defense), m in cells.items():
        if "detect_precision" in m:
            print(f"| {attack} | {defense} | {m['detect_precision']:.3f} | {m['detect_recall']:.3f} | "
                  f"{m['clean_split_poison_rate']:.4f} |")


if __name__ == "__main__":
    main()
