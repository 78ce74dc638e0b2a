"""The RAP paper's table: surrogates x methods (each alone, +RAP, +RAP-LS, +RAP-warm) x target models, targeted
success with 95 % Wilson intervals and the seconds each cell took — every cell an ordinary `run_transfer` run.

Usage: ADVML_DATA_DIR=../shared/data python benchmarks/transfer_table.py [--surrogates resnet18_narrow]
       [--models resnet18_narrow,cnn_small,vgg16_bn,mobilenet_v2] [--bases mi-ti-di]
       [--extras ,rap,rap-ls,rap-warm] [--out runs/transfer_table] [--set KEY=VALUE ...]
Each surrogate attacks every other model of --models. Finished cells are reused (delete a folder to rerun it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from advml.config import deep_merge, parse_assignments, validate
from advml.experiments import TransferSettings, run_transfer


def methods(bases: str, extras: str) -> list[str]:
    """'mi-ti-di' x ',rap,rap-ls' -> ['mi-ti-di', 'mi-ti-di+rap', 'mi-ti-di+rap-ls']."""
    return [b + (f"+{e}" if e else "") for b in bases.split(",") for e in extras.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--surrogates", default="resnet18_narrow")
    ap.add_argument("--models", default="resnet18_narrow,cnn_small,vgg16_bn,mobilenet_v2")
    ap.add_argument("--bases", default="mi-ti-di")
    ap.add_argument("--extras", default=",rap,rap-ls,rap-warm", help="'' = the base method alone")
    ap.add_argument("--out", default="runs/transfer_table")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE for every cell")
    ap.add_argument("--no-run", action="store_true", help="only render the finished cells")
    args = ap.parse_args()
    extra = parse_assignments(args.sets)
    models = args.models.split(",")
    rows: list[tuple[str, str, dict, float]] = []
    for surrogate in args.surrogates.split(","):
        targets = [m for m in models if m != surrogate]
        for method in methods(args.bases, args.extras):
            out = Path(args.out) / surrogate / method.replace("+", "_")
            if not (out / "metrics.json").is_file():
                if args.no_run:
                    continue
                settings = validate(TransferSettings, deep_merge(
                    {"surrogate": surrogate, "targets": targets, "method": method, "progress": False}, extra))
                run_transfer(settings, out, overwrite=out.exists())
            m = json.loads((out / "metrics.json").read_text())
            seconds = json.loads((out / "timing.json").read_text())["seconds"]
            rows.append((surrogate, method, m, seconds))
            print(json.dumps({"surrogate": surrogate, "method": method, "white_box": m["white_box"],
                              **m["success"], "seconds": round(seconds, 1)}), flush=True)
    print("\n| surrogate | method | white-box | " + " | ".join(models) + " | s |")
    print("| --- | --- |" + " ---: |" * (len(models) + 2))
    for surrogate, method, m, seconds in rows:
        ci = m["success_ci95"]
        cell = lambda k: f"{m['success'][k]:.3f} [{ci[k][0]:.2f}, {ci[k][1]:.2f}]"  # noqa: E731
        cells = ["—" if k == surrogate else cell(k) for k in models]
        print(f"| {surrogate} | {method} | {m['white_box']:.3f} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    print(f"\n{rows[0][2]['n_images'] if rows else 0} images per cell; denominator: all of them.")


if __name__ == "__main__":
    main()
