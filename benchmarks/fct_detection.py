"""What makes FCT detection work at small scale: D_p precision / recall and D_c's poisoned share on real
CIFAR-10 for model width, training-set size, fine-tuning epochs, FCT transform, transform draws and feature
normalisation.

Usage: ADVML_DATA_DIR=../shared/data python benchmarks/fct_detection.py [--attacks badnets,blend_kitty,sig:rate=1.0]
       [--sizes 10000] [--widths 16,32] [--finetune 4,10] [--transforms rotate+translate,translate]
       [--draws 1,4] [--normalize both|no|yes] [--finetune-loss intra,ce+intra] [--out runs/fct_detection]
   or: ... python benchmarks/fct_detection.py --cell runs/bench/<bench>/cells/<cell> [--transforms ...]
       scores the SD model a finished D-BR/D-ST run trained (its checkpoint), on that run's poisoned data.
Each trained SD model is kept under --out (safetensors) and reused; scoring variants are cheap.
Prints one markdown table and writes --out/table.json. AUROC is the FCT score's ranking of poisoned over clean
samples: 0.5 is chance, below 0.5 means poisoned samples' features move *less* than clean ones.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_auroc

from advml.backdoor.attacks import build_attack
from advml.backdoor.defenses.fct import fct_scores
from advml.backdoor.defenses.sd import SD_CHECKPOINTS, SDSettings, train_sd_model
from advml.backdoor.defenses.split import split_by_score
from advml.config import load_yaml, validate
from advml.data import load_dataset
from advml.models import build_model
from advml.utils.io import load_tensors, save_tensors, write_text_atomic
from advml.utils.state import model_state


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def _attack(text: str) -> tuple[str, dict[str, float]]:
    """'sig:rate=1.0' -> ('sig', {'rate': 1.0}): an attack name with numeric settings."""
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--attacks {text!r}: settings are key=value, separated by ';'")
        options[key] = float(value)
    return name, options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attacks", default="badnets,blend_kitty", help="comma-separated; name:key=value;key=value "
                    "sets an attack's numeric settings (sig:rate=1.0)")
    ap.add_argument("--sizes", default="10000")
    ap.add_argument("--widths", default="16")
    ap.add_argument("--finetune", default="10")
    ap.add_argument("--transforms", default="rotate+translate", help="comma-separated; '+' composes transforms")
    ap.add_argument("--draws", default="1,4")
    ap.add_argument("--normalize", choices=("both", "no", "yes"), default="both", help="L2-normalised features")
    ap.add_argument("--finetune-loss", default="intra", help="comma-separated SD fine-tune losses: intra (official), "
                    "ce+intra")
    ap.add_argument("--amp", choices=("auto", "true", "false"), default="auto",
                    help="the SD model's training precision (train.amp)")
    ap.add_argument("--out", default="runs/fct_detection")
    ap.add_argument("--cell", type=Path, help="a finished D-BR/D-ST run folder: score its SD model on its data")
    args = ap.parse_args()
    amp = {"auto": "auto", "true": True, "false": False}[args.amp]
    out = Path(args.out)
    rows: list[dict] = []
    if args.cell is not None:
        model, poisoned, key = _cell_model(args.cell)
        _score(model, poisoned, key, 0.0, args, rows)
        _report(out, rows)
        return
    for attack, n, width, ft, ft_loss in itertools.product(args.attacks.split(","), _ints(args.sizes),
                                                           _ints(args.widths), _ints(args.finetune),
                                                           args.finetune_loss.split(",")):
        data = load_dataset("cifar10", train_size=n, test_size=100, seed=0, download=False)
        name, options = _attack(attack)
        poisoned = build_attack(name, **options).poison(data.train, seed=0)
        torch.manual_seed(0)
        model = build_model("resnet18_narrow", 10, mean=data.mean, std=data.std, width=width)
        sd = SDSettings(finetune_epochs=ft, finetune_loss=ft_loss)
        tag = attack.replace(":", "_").replace(";", "_") + ("" if args.amp == "auto" else f"_amp-{args.amp}")
        path = out / f"{tag}_n{n}_w{width}_ft{ft}_{ft_loss.replace('+', '-')}_{sd.schedule}.safetensors"
        if path.is_file():
            tensors, meta = load_tensors(path)
            model.load_state_dict(tensors)
            train_s = float(meta["seconds"])
        else:
            start = time.perf_counter()
            train_sd_model(model, poisoned, sd, progress=False, amp=amp)
            train_s = time.perf_counter() - start
            save_tensors(path, model.state_dict(), {"seconds": repr(train_s)})
        key = {"attack": attack, "amp": args.amp, "train_size": n, "width": width, "finetune_epochs": ft,
               "finetune_loss": ft_loss}
        _score(model, poisoned, key, train_s, args, rows)
    _report(out, rows)


def _cell_model(cell: Path) -> tuple[torch.nn.Module, object, dict]:
    """The SD model a finished run trained (checkpoint) and that run's poisoned training set."""
    from advml.experiments.backdoor import BackdoorRunSettings, run_model_factory

    s = validate(BackdoorRunSettings, load_yaml(cell / "config.yaml"))
    data = load_dataset(s.dataset, s.data_dir, train_size=s.train_size, test_size=s.test_size, seed=s.seed,
                        download=False)
    poisoned = build_attack(s.attack).poison(data.train, seed=s.seed)
    sd = s.defense.get("sd") or {}
    model = run_model_factory(s, data, init=False)(sd.get("model"))
    stage = cell / "checkpoints" / "defense" / "sd"
    found = [p for p in (stage / SD_CHECKPOINTS / "last.safetensors", stage / "sd_finetune" / "last.safetensors")
             if p.is_file()]  # the second: runs from before the one SD trainer
    if not found:
        raise SystemExit(f"{cell}: no SD model checkpoint under {stage}")
    tensors, _ = load_tensors(found[0])
    model.load_state_dict(model_state(tensors))
    width = s.model_options.get("width", s.model)
    return model, poisoned, {"attack": s.attack.get("name"), "train_size": s.train_size, "width": width,
                             "finetune_epochs": sd.get("finetune_epochs", SDSettings().finetune_epochs),
                             "finetune_loss": sd.get("finetune_loss",
                                                     "ce+intra" if found[0].parent.name == "sd_finetune" else "intra")}


def _score(model: torch.nn.Module, poisoned, key: dict, train_s: float, args, rows: list[dict]) -> None:
    norms = {"both": (False, True), "no": (False,), "yes": (True,)}[args.normalize]
    flags = poisoned.poison_flags
    for tau, draws, norm in itertools.product(args.transforms.split(","), _ints(args.draws), norms):
        start = time.perf_counter()
        scores = fct_scores(model, poisoned, transforms=tau.split("+"), draws=draws, normalize=norm)
        m = split_by_score(scores).metrics(flags)
        row = {**key, "transforms": tau, "draws": draws, "normalize": norm, **m,
               "auroc": float(binary_auroc(scores, flags.long())), "train_s": round(train_s),
               "score_s": round(time.perf_counter() - start)}
        rows.append(row)
        print(json.dumps(row), flush=True)


def _report(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "table.json", json.dumps(rows, indent=1))
    print("\n| attack | N | width | ft ep | ft loss | tau | draws | L2 norm | D_p precision | D_p recall "
          "| D_c poisoned | AUROC |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attack']} | {r['train_size']} | {r['width']} | {r['finetune_epochs']} | {r['finetune_loss']} "
              f"| {r['transforms']} | "
              f"{r['draws']} | {r['normalize']} | {r['detect_precision']:.3f} | {r['detect_recall']:.3f} | "
              f"{r['clean_split_poison_rate']:.4f} | {r['auroc']:.3f} |")


if __name__ == "__main__":
    main()
