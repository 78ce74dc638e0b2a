"""Train one model per attack on real data and print clean accuracy and ASR as one table (plus stealth).

Usage: ADVML_DATA_DIR=../shared/data python benchmarks/attack_table.py [configs/cpu_attacks.yaml] [--out runs/attacks]
Each row is an ordinary `run_backdoor` run folder under --out; finished rows are reused (delete to rerun).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from advml.config import deep_merge, load_yaml
from advml.experiments import load_settings, run_backdoor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", nargs="?", default="configs/cpu_attacks.yaml")
    parser.add_argument("--out", default="runs/attacks")
    parser.add_argument("--only", help="comma-separated row names")
    args = parser.parse_args()
    preset = load_yaml(args.preset)
    rows = preset["rows"]
    names = args.only.split(",") if args.only else list(rows)
    results = {}
    for row in names:
        spec = rows[row] or {}
        attack = {"name": row, **spec.get("attack", {})}
        out = Path(args.out) / row
        if (out / "metrics.json").is_file():
            results[row] = json.loads((out / "metrics.json").read_text())
        else:
            overrides = {"attack": attack, "train": {**spec.get("train", {}), "progress": False}}
            settings = load_settings(None, deep_merge(preset["base"], overrides))
            results[row] = run_backdoor(settings, out, overwrite=True).metrics
        m = results[row]
        print(f"{row}: clean_acc {m['clean_acc']:.3f} asr {m['asr'] if m['asr'] is None else round(m['asr'], 3)}",
              flush=True)
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    base = results.get("none", {}).get("clean_acc")
    print("\n| attack | clean_acc | vs. no attack | ASR | PSNR (dB) | l-inf | SSIM |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row, m in results.items():
        delta = fmt(None if base is None else 100 * (m["clean_acc"] - base), "+.1f")
        print(f"| {row} | {m['clean_acc']:.3f} | {delta} | {fmt(m['asr'], '.3f')} | {fmt(m['psnr'], '.2f')} | "
              f"{fmt(m['linf'], '.1f')} | {fmt(m['ssim'], '.3f')} |")


if __name__ == "__main__":
    main()
