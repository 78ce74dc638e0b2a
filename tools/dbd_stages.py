"""Look inside a finished DBD bench cell from its stage checkpoints (`checkpoints/defense/<stage>`).

  warmup CELL: the SCE warm-up model's clean test accuracy and ASR, and where the poisons rank by its SCE loss (plain
    images), i.e. the first MixMatch epoch's split
  mixmatch CELL OUT key=value ...: the MixMatch stage again from the cell's SimCLR and warm-up checkpoints (copied into
    OUT, resumed there), with `defense.mixmatch` keys changed, e.g. rampup_epochs=190

Usage: ADVML_DATA_DIR=../shared/data python tools/dbd_stages.py warmup results/<bench>/cells/<dbd cell>"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from advml.backdoor.defenses import DefenseContext, build_defense, untrusted_view
from advml.backdoor.defenses.dbd import sample_losses, sce_loss
from advml.experiments.backdoor import load_settings, run_data, run_model_factory
from advml.metrics import accuracy, attack_success_rate


def _load(cell: Path) -> tuple[Any, Any, Any, Any]:
    """The cell's settings, data, poisoned training set and triggered test set, rebuilt as the run built them."""
    s = load_settings(cell / "config.yaml")
    data, _, poisoned, triggered = run_data(s)
    return s, data, poisoned, triggered


def warmup(cell: Path) -> dict[str, float]:
    """The warm-up model's test accuracy / ASR and the poisons' SCE-loss rank (0 lowest, 1 highest)."""
    s, data, poisoned, triggered = _load(cell)
    model = run_model_factory(s, data, init=False)(s.defense["encoder"]["model"])
    state = load_file(cell / "checkpoints" / "defense" / "warmup" / "last.safetensors")
    prefix = "model.classifier."  # the LinearProbe around the classifier
    model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    model.eval()
    d = s.defense
    scores = sample_losses(model, poisoned, lambda z, y: sce_loss(z, y, d.get("sce_alpha", 0.1),
                                                                  d.get("sce_beta", 1.0), "none"))
    rank = scores.argsort().argsort().float() / scores.numel()
    flags = poisoned.poison_flags.bool()
    return {"clean_acc": accuracy(model, data.test), "asr": attack_success_rate(model, triggered),
            "poison_rank_mean": rank[flags].mean().item(), "clean_rank_mean": rank[~flags].mean().item(),
            "poisons_in_labelled_half": int((rank[flags] < 0.5).sum())}


def mixmatch(cell: Path, out: Path, changes: dict[str, Any]) -> dict[str, Any]:
    """DBD's MixMatch stage again with `changes`, the SimCLR and warm-up stages resumed from the cell's checkpoints."""
    s, data, poisoned, triggered = _load(cell)
    settings = dict(s.defense)
    settings["mixmatch"] = {**settings["mixmatch"], **changes}
    for stage in ("encoder", "warmup"):
        shutil.copytree(cell / "checkpoints" / "defense" / stage, out / stage, dirs_exist_ok=True)
    torch.manual_seed(s.seed + 1)  # as the run seeds its defense
    ctx = DefenseContext(new_model=run_model_factory(s, data, init=False), backdoored=None, seed=s.seed,
                         device=s.train.device, amp=s.train.amp, progress=False, checkpoint_dir=out, resume=True,
                         train_config=s.train, clean_data=None)
    result = build_defense(settings).run(untrusted_view(poisoned), ctx)
    assert result.split is not None
    return {"mixmatch": settings["mixmatch"], "clean_acc": accuracy(result.model, data.test),
            "asr": attack_success_rate(result.model, triggered),
            "last_split_labelled_poisons": int(poisoned.poison_flags.bool()[result.split.clean].sum()),
            "labelled_changes_per_epoch": result.report["metrics"]["labelled_changes_per_epoch"]}


if __name__ == "__main__":
    command, cell = sys.argv[1], Path(sys.argv[2])
    if command == "warmup":
        print(json.dumps(warmup(cell)))
    elif command == "mixmatch":
        over = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in sys.argv[4:])}
        print(json.dumps(mixmatch(cell, Path(sys.argv[3]), over)))
    else:
        sys.exit(f"usage: {__doc__}")
