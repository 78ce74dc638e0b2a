"""A backdoor run is "settings in, folder out": `run_backdoor(settings, out)` poisons, trains (and defends),
evaluates and writes `config.yaml`, `metrics.json`, `model.safetensors` and checkpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import Field, field_validator

from advml import model_cache
from advml.backdoor.attacks import ATTACKS, build_attack
from advml.backdoor.defenses import DEFENSES, SDSettings, Split, apply_defense_presets, build_defense, fct_histogram
from advml.component import resolved
from advml.config import Seed, Settings, dump_yaml, validate
from advml.data import load_dataset
from advml.experiments.base import (
    EXPERIMENTS,
    Experiment,
    RunResult,
    check_resumed_config,
    layers,
    model_factory,
    prepare_out,
)
from advml.metrics import accuracy, attack_success_rate, stealth
from advml.provenance import file_sha256, train_key
from advml.train import TrainConfig, Trainer
from advml.utils.io import save_tensors, write_json, write_text_atomic
from advml.utils.precision import resolve_precision, set_precision
from advml.utils.rundir import RunFolder
from advml.utils.runtime import resolve_device, seed_everything

log = logging.getLogger("advml")
METRIC_KEYS = ("clean_acc", "asr", "psnr", "linf", "ssim")
STEALTH_SAMPLE = 1000  # poisoned images used for PSNR / l-inf / SSIM


class BackdoorRunSettings(Settings):
    """Everything a backdoor run uses; written back, defaults included, as the run's config.yaml."""

    dataset: str = "sample"
    data_dir: str | None = None
    train_size: int | None = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1)
    subset: Literal["stratified", "balanced"] = Field(
        "stratified", description="how train_size/test_size subsets are drawn: stratified (the class proportions, "
                                  "every class kept) or balanced (equal numbers per class)")
    download: bool = Field(True, description="allow torchvision downloads when files are missing")
    model: str = "cnn_small"
    model_options: dict[str, Any] = Field(default_factory=dict)
    init_weights: str | None = Field(None, description="start training from these weights (safetensors, or a "
                                                       "torch file read with weights_only=True)")
    attack: dict[str, Any] = Field(default_factory=lambda: {"name": "badnets"})
    defense: dict[str, Any] = Field(default_factory=lambda: {"name": "none"},
                                    description="a defense name, or {name: ..., settings}")
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: Seed = 0
    reuse_backdoored: bool = Field(False, description="cache the backdoored model and reuse it in any run of the "
                                   "same data, attack, model, training and seed (e.g. a table's no-defense and D-BR "
                                   "cells); keyed and checked by their fingerprint ($ADVML_CACHE_DIR/backdoored)")

    @field_validator("model")
    @classmethod
    def _model_name(cls, v: str) -> str:
        from advml.models import MODELS

        MODELS.get(v)  # an unknown name fails here, with the closest registered name
        return v

    @field_validator("train")
    @classmethod
    def _device(cls, v: TrainConfig) -> TrainConfig:
        resolve_device(v.device)  # 'tpu9' or an absent CUDA fails before any work
        return v

    @field_validator("attack")
    @classmethod
    def _attack_settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        return resolved(ATTACKS, v if "name" in v else {"name": "badnets", **v})

    @field_validator("defense", mode="before")
    @classmethod
    def _defense(cls, v: Any) -> dict[str, Any]:
        return resolved(DEFENSES, v if isinstance(v, dict) else {"name": v if isinstance(v, str) else str(v)})


def load_settings(config: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
                  preset: str | None = None) -> BackdoorRunSettings:
    """Defaults < packaged preset < YAML file < overrides, validated (a preset's per-defense layers resolved)."""
    data = apply_defense_presets(layers(config, overrides, preset, "backdoor"))
    data.pop("sd", None)
    return validate(BackdoorRunSettings, data)


def run_fingerprint(settings: BackdoorRunSettings, data: Any, sd: SDSettings | None = None) -> dict[str, Any]:
    """Everything a backdoor (or detect) run's result depends on: every checkpoint it writes carries this, and a
    resume is refused, naming the difference, when it does not match."""
    s = settings.model_dump(mode="json")
    return {"data": {"dataset": s["dataset"], "source": data.source, "train_size": s["train_size"],
                     "test_size": s["test_size"], "content": data.fingerprint()},
            "attack": s["attack"],
            "model": {"name": s["model"], "options": s["model_options"], "init_weights": s["init_weights"],
                      "init_weights_sha256": file_sha256(settings.init_weights)},
            "defense": s["defense"] if sd is None else {"sd": sd.model_dump(mode="json")},
            "train": train_key(s["train"]), "seed": s["seed"]}


def run_model_factory(settings: BackdoorRunSettings, data: Any, *, init: bool = True) -> Callable[..., torch.nn.Module]:
    """The run's model factory: its architecture, options and (with `init`) initial weights."""
    return model_factory(data, settings.model, options=settings.model_options,
                         weights=settings.init_weights if init else None)


def run_data(settings: BackdoorRunSettings) -> tuple[Any, Any, Any, Any]:
    """The run's data, attack, poisoned training set and triggered test set (None without a trigger)."""
    data = load_dataset(settings.dataset, settings.data_dir, train_size=settings.train_size,
                        test_size=settings.test_size, seed=settings.seed, download=settings.download,
                        subset=settings.subset)
    attack = build_attack(settings.attack)
    return data, attack, attack.poison(data.train, seed=settings.seed), attack.backdoor_test_set(data.test)


def setup(settings: BackdoorRunSettings, folder: RunFolder, *, resume: bool, overwrite: bool, start: float,
          sd: SDSettings | None = None) -> tuple[Any, Any, Any, Any, torch.nn.Module]:
    """Check a resumed run's settings, load the data, poison it, build the run's seeded first model (its options and
    initial weights fail here, before any write), begin the run (its fingerprint checked against a resumed one's, an
    overwritten one's files cleared) and write config.yaml."""
    out = folder.path
    if resume and not overwrite:
        check_resumed_config(out, BackdoorRunSettings, settings)
        if sd is not None:
            check_resumed_config(out, SDSettings, sd, "sd.yaml", "sd")
    seed_everything(settings.seed)
    data, attack, poisoned, backdoor_test = run_data(settings)
    torch.manual_seed(settings.seed)  # the backdoored model's initialisation (nothing draws from it before training)
    model = run_model_factory(settings, data)()
    folder.begin(run_fingerprint(settings, data, sd), resume=resume, overwrite=overwrite, start=start)
    write_text_atomic(out / "config.yaml", dump_yaml(settings.model_dump(mode="json")))
    return data, attack, poisoned, backdoor_test, model


def backdoored_key(settings: BackdoorRunSettings, data: Any, model: torch.nn.Module) -> dict[str, Any]:
    """What a backdoored model depends on: the run's fingerprint without its defense, with the precision its
    training settings resolve to here."""
    key = {k: v for k, v in run_fingerprint(settings, data).items() if k != "defense"}
    precision = resolve_precision(settings.train.amp, resolve_device(settings.train.device), model)
    return {**key, "precision": precision.dtype}


def split_outputs(out: Path, split: Split, poisoned: Any, name: str, score: str | None = None) -> dict[str, Any]:
    """Save the split and the score histogram (FCT's, or a detector's `score`); the detection metrics against the
    true poison flags."""
    save_tensors(out / "split.safetensors", split.tensors(), {"attack": name})
    fct_histogram(split.scores, poisoned.poison_flags, out / "fct_hist.png", split=split,
                  **({"title": f"{score}, {name}", "xlabel": score} if score else {"title": f"FCT scores, {name}"}))
    return {**split.metrics(poisoned.poison_flags), "split_sizes": {"clean": split.clean.numel(),
            "poisoned": split.poisoned.numel(), "uncertain": split.uncertain.numel()}}


def _throughput(timing: dict[str, Any]) -> dict[str, Any]:
    """A trainer's timing with its images per second (training steps only, all resumes together)."""
    secs = timing.get("train_seconds") or 0.0
    return {**timing, "images_per_second": timing.get("images", 0) / secs if secs else None}


def run_backdoor(settings: BackdoorRunSettings, out: str | Path, *, resume: bool = False,
                 overwrite: bool = False) -> RunResult:
    """Poison the training set, train on it (and defend), measure clean accuracy, ASR and trigger stealth."""
    start = time.perf_counter()
    folder = prepare_out(out, "backdoor", resume=resume, overwrite=overwrite)
    try:
        return _run_backdoor(settings, folder, resume=resume, overwrite=overwrite, start=start)
    finally:
        folder.release()


def _run_backdoor(settings: BackdoorRunSettings, folder: RunFolder, *, resume: bool, overwrite: bool,
                  start: float) -> RunResult:
    from advml.backdoor.defenses import DefenseContext, untrusted_view
    from advml.backdoor.defenses.base import oracle_clean_subset

    out = folder.path
    data, attack, poisoned, backdoor_test, first = setup(settings, folder, resume=resume, overwrite=overwrite,
                                                         start=start)
    defense = build_defense(settings.defense)
    evals = {"clean_acc": data.test} if backdoor_test is None else {"clean_acc": data.test, "asr": backdoor_test}
    metrics: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    backdoored = None
    cached: dict[str, Any] | None = None
    timing: dict[str, Any] = {}
    if defense.needs_backdoored_model:
        backdoored = first
        key = backdoored_key(settings, data, backdoored) if settings.reuse_backdoored else None
        cached = model_cache.load(backdoored, key) if key is not None else None
        if cached is not None:
            log.info("advml: the backdoored %s from the cache (%s)", settings.model, cached["folder"])
            set_precision(backdoored, resolve_precision(settings.train.amp, resolve_device(settings.train.device),
                                                        backdoored))
            history = cached["history"]
            timing = {**cached["timing"], "reused": cached["folder"]}
        else:
            log.info("advml: training %s on %d images (%d poisoned by %s), %d epochs", settings.model, len(poisoned),
                     int(poisoned.poison_flags.sum()), attack.name, settings.train.epochs)
            trainer = Trainer(backdoored, settings.train, seed=settings.seed, checkpoint_dir=out / "checkpoints")
            history = trainer.fit(poisoned, evals, resume=resume)
            timing = {"precision": trainer.precision.describe(), "train": _throughput(trainer.timing)}
            if key is not None:
                model_cache.store(backdoored, key, history, timing)
        final = history[-1] if history else {}
        if resume or cached is not None:  # weights from a checkpoint or the cache: measure them, never repeat
            final = {name: accuracy(backdoored, d, batch_size=settings.train.eval_batch_size)  # what was recorded
                     for name, d in evals.items()}
    if cached is not None:
        metrics["backdoored_from_cache"] = cached["folder"]
    model = backdoored
    if defense.name != "none":
        if backdoored is not None:
            metrics["clean_acc_before"], metrics["asr_before"] = final["clean_acc"], final.get("asr")
        clean = None
        if defense.needs_clean_data:  # an oracle: truly clean training samples, said so in metrics.json
            # needs_clean_data: the defense's settings class has clean_fraction (DefenseSettings does not)
            clean, _ = oracle_clean_subset(poisoned, cast(Any, defense.settings).clean_fraction, settings.seed)
            metrics["clean_subset"] = {"size": len(clean), "fraction": cast(Any, defense.settings).clean_fraction,
                                       "source": "truly clean training samples (oracle)"}
        torch.manual_seed(settings.seed + 1)
        ctx = DefenseContext(new_model=run_model_factory(settings, data, init=False), backdoored=backdoored,
                             seed=settings.seed, device=settings.train.device, amp=settings.train.amp,
                             progress=settings.train.progress,
                             checkpoint_dir=out / "checkpoints" / "defense", resume=resume,
                             train_config=settings.train, clean_data=clean)
        log.info("advml: defense %s", defense.name)
        result = defense.run(untrusted_view(poisoned), ctx)  # no test data, no poison flags
        model = result.model
        if result.split is not None:
            metrics.update(split_outputs(out, result.split, poisoned, attack.name, result.report.get("score_name")))
        metrics.update(result.report.get("metrics", {}))  # a defense's own extra keys (JSON values)
        metrics["defense_history"] = result.report.get("history")
        metrics["clean_acc"] = accuracy(model, data.test)
        metrics["asr"] = attack_success_rate(model, backdoor_test) if backdoor_test is not None else None
    else:
        metrics["clean_acc"], metrics["asr"] = final["clean_acc"], final.get("asr")
    assert model is not None  # the backdoored model (defense "none" needs one) or the defense's
    save_tensors(out / "model.safetensors", model.state_dict(), {"model": settings.model})

    has_poison = bool(poisoned.poison_flags.any())
    metrics.update({
        **(stealth(*poisoned.poisoned_pairs(limit=STEALTH_SAMPLE)) if has_poison
           else {"psnr": None, "linf": None, "ssim": None}),
        "poison_count": int(poisoned.poison_flags.sum()),
        "train_size": len(poisoned),
        "test_size": len(data.test),
        "backdoor_test_size": len(backdoor_test) if backdoor_test is not None else 0,
        "history": history,
    })
    metrics = {k: metrics[k] for k in ("clean_acc", "asr")} | metrics
    assert folder.scope is not None  # bound by setup (folder.begin) until release
    write_json(out / "timing.json", {"seconds": folder.scope.seconds(), **timing})  # every process, summed
    write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return RunResult(out, metrics)


EXPERIMENTS.add("backdoor", Experiment("backdoor", BackdoorRunSettings, load_settings, run_backdoor, "backdoor"),
                "poison, train (and defend), measure clean accuracy, ASR and stealth")
