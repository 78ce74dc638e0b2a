"""A detect run is the SD module alone: `run_detect(settings, sd, out)` poisons, trains the SD model, FCT-scores
every training sample and splits them into D_c / D_u / D_p; it writes the split, metrics (with the score's AUROC)
and the histogram (`configs/seed/fct_detection.yaml` is a bench of them)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from advml.backdoor.defenses import SDSettings, apply_defense_presets, distinguish, untrusted_view
from advml.config import Settings, dump_yaml, validate
from advml.experiments.backdoor import BackdoorRunSettings, run_model_factory, setup, split_outputs
from advml.experiments.base import EXPERIMENTS, Experiment, RunResult, layers, prepare_out
from advml.metrics import score_auroc
from advml.utils.io import write_json, write_text_atomic
from advml.utils.rundir import RunFolder


class DetectRunSettings(Settings):
    """A detect run's settings: the backdoor run's (data, attack, model, training) and the SD module's (`sd`)."""

    run: BackdoorRunSettings
    sd: SDSettings


def load_detect_settings(config: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
                         preset: str | None = None) -> tuple[BackdoorRunSettings, SDSettings]:
    """Run settings plus the SD module's (`sd:` at the top level, else the preset's `defense.sd`)."""
    data = apply_defense_presets(layers(config, overrides, preset, "backdoor"))
    sd = data.pop("sd", None) or {}
    data.pop("defense", None)
    return validate(BackdoorRunSettings, data), validate(SDSettings, sd, "sd")


def run_detect(settings: BackdoorRunSettings, sd: SDSettings, out: str | Path, *, resume: bool = False,
               overwrite: bool = False) -> RunResult:
    """The SD module alone: poison, train the SD model, FCT-score, split; write split, metrics, histogram."""
    start = time.perf_counter()
    folder = prepare_out(out, "detect", resume=resume, overwrite=overwrite)
    try:
        return _run_detect(settings, sd, folder, resume=resume, overwrite=overwrite, start=start)
    finally:
        folder.release()


def _run_detect(settings: BackdoorRunSettings, sd: SDSettings, folder: RunFolder, *, resume: bool, overwrite: bool,
                start: float) -> RunResult:
    out = folder.path
    data, attack, poisoned, _, _ = setup(settings, folder, resume=resume, overwrite=overwrite, start=start, sd=sd)
    write_text_atomic(out / "sd.yaml", dump_yaml(sd.model_dump(mode="json")))
    torch.manual_seed(settings.seed + 1)
    model = run_model_factory(settings, data, init=False)(sd.model)
    split = distinguish(model, untrusted_view(poisoned), sd, seed=settings.seed, device=settings.train.device,
                        amp=settings.train.amp, progress=settings.train.progress, checkpoint_dir=out / "checkpoints",
                        resume=resume)
    metrics = {**split_outputs(out, split, poisoned, attack.name),
               "auroc": score_auroc(split.scores, poisoned.poison_flags),
               "poison_count": int(poisoned.poison_flags.sum()),
               "train_size": len(poisoned)}
    assert folder.scope is not None  # bound by setup (folder.begin) until release
    write_json(out / "timing.json", {"seconds": folder.scope.seconds()})
    write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return RunResult(out, metrics)


def _load(config: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
          preset: str | None = None) -> DetectRunSettings:
    run, sd = load_detect_settings(config, overrides, preset=preset)
    return DetectRunSettings(run=run, sd=sd)


def _run(settings: DetectRunSettings, out: str | Path, *, resume: bool = False, overwrite: bool = False) -> RunResult:
    return run_detect(settings.run, settings.sd, out, resume=resume, overwrite=overwrite)


EXPERIMENTS.add("detect", Experiment("detect", DetectRunSettings, _load, _run, "backdoor",
                                     files=(("run", "config.yaml"), ("sd", "sd.yaml"))),
                "the SD module alone: FCT scores and the D_c / D_u / D_p split of the poisoned training set")
