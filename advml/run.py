"""A run is "settings in, folder out": `run_backdoor(settings)` poisons, trains, evaluates and writes
`config.yaml`, `metrics.json`, `model.safetensors` and checkpoints. The CLI and the demo call it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from advml import model_cache
from advml.backdoor.attacks import build_attack
from advml.backdoor.defenses.sd import SDSettings, Split, fct_histogram
from advml.config import Seed, Settings, deep_merge, dump_yaml, load_yaml, validate
from advml.data import load_dataset
from advml.errors import ConfigError
from advml.metrics import accuracy, attack_success_rate, stealth
from advml.models import build_model
from advml.provenance import file_sha256, refuse_mismatch, train_key
from advml.registry import Registry
from advml.train import TrainConfig, Trainer
from advml.utils.io import save_tensors, write_json, write_text_atomic
from advml.utils.precision import resolve_precision, set_precision
from advml.utils.rundir import RunFolder, open_run
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
        return build_attack(v if "name" in v else {"name": "badnets", **v}).describe()

    @field_validator("defense", mode="before")
    @classmethod
    def _defense(cls, v: Any) -> dict[str, Any]:
        from advml.backdoor.defenses import build_defense

        return build_defense(v if isinstance(v, (str, dict)) else str(v)).describe()


@dataclass
class RunResult:
    """Where a run wrote its files, and its metrics."""

    out: Path
    metrics: dict[str, Any]


PRESET_DIR = Path(__file__).parent / "presets"
PRESETS: Registry[Path] = Registry("preset")
for _file in sorted(PRESET_DIR.glob("*.yaml")):
    PRESETS.add(_file.stem, _file, _file.read_text().splitlines()[0].lstrip("# "))


def _preset(name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A packaged preset's settings, over those of the preset it `extends` (one home for a shared recipe)."""
    if name in chain:
        raise ConfigError(f"preset {name!r} extends itself (through {' -> '.join(chain)})")
    data = load_yaml(PRESETS.get(name))
    parent = data.pop("extends", None)
    return deep_merge(_preset(str(parent), (*chain, name)), data) if parent else data


def _layers(config: str | Path | None, overrides: dict[str, Any] | None, preset: str | None) -> dict[str, Any]:
    """Merge the layers, then resolve a preset's per-defense settings: `sd` (the SD module, shared by D-BR, D-ST
    and `advml detect`) and `defense_presets[<name>]`, under whatever the layers set explicitly."""
    data = _preset(preset) if preset else {}
    data = deep_merge(data, load_yaml(config)) if config else data
    data = deep_merge(data, overrides or {})
    per_defense = data.pop("defense_presets", None) or {}
    defense = data.get("defense", {"name": "none"})
    if isinstance(defense, str):
        defense = {"name": defense}
    name = defense.get("name", "none")
    base = dict(per_defense.get(name) or {})
    if "sd" in data and name in ("d-br", "d-st"):
        base["sd"] = deep_merge(data["sd"], base.get("sd", {}))
    if base:
        data["defense"] = deep_merge(base, defense)
    return data


def load_settings(config: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
                  preset: str | None = None) -> BackdoorRunSettings:
    """Defaults < packaged preset < YAML file < overrides, validated."""
    data = _layers(config, overrides, preset)
    data.pop("sd", None)
    return validate(BackdoorRunSettings, data)


def load_detect_settings(config: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
                         preset: str | None = None) -> tuple[BackdoorRunSettings, SDSettings]:
    """Run settings plus the SD module's (`sd:` at the top level, else the preset's `defense.sd`)."""
    data = _layers(config, overrides, preset)
    sd = data.pop("sd", None) or {}
    data.pop("defense", None)
    return validate(BackdoorRunSettings, data), validate(SDSettings, sd, "sd")


def prepare_out(out: str | Path, *, resume: bool, overwrite: bool, kind: str = "backdoor") -> RunFolder:
    """Check the output folder before any work starts and lock it (see `advml.utils.rundir`)."""
    return open_run(out, kind, resume=resume, overwrite=overwrite)


def comparable(settings: Settings) -> dict[str, Any]:
    """Settings as compared on resume: all but those that never change a result (progress bars, device...)."""
    data = settings.model_dump(mode="json")
    if isinstance(data.get("train"), dict):
        data["train"] = train_key(data["train"])
    return {k: v for k, v in data.items() if k not in {"progress", "device", "data_dir", "download",
                                                       "reuse_backdoored"}}


def check_resumed_config(out: Path, model: type[Settings], settings: Settings, name: str = "config.yaml",
                         key: str = "") -> None:
    """A resumed run's recorded settings (under `key`, if given) must be the ones given; the error names every one
    that differs."""
    path = out / name
    if not path.is_file():
        return
    try:
        previous = validate(model, load_yaml(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: not the settings of a run this advml can resume ({e})") from None
    before, after = comparable(previous), comparable(settings)
    refuse_mismatch(str(path), {key: before} if key else before, {key: after} if key else after)


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


def _setup(settings: BackdoorRunSettings, folder: RunFolder, *, resume: bool, overwrite: bool, start: float,
           sd: SDSettings | None = None) -> tuple[Any, Any, Any, Any]:
    """Check a resumed run's settings, load the data, poison it, begin the run (its fingerprint checked against a
    resumed one's, an overwritten one's files cleared), write config.yaml."""
    out = folder.path
    if resume and not overwrite:
        check_resumed_config(out, BackdoorRunSettings, settings)
        if sd is not None:
            check_resumed_config(out, SDSettings, sd, "sd.yaml", "sd")
    seed_everything(settings.seed)
    data = load_dataset(settings.dataset, settings.data_dir, train_size=settings.train_size,
                        test_size=settings.test_size, seed=settings.seed, download=settings.download,
                        subset=settings.subset)
    attack = build_attack(settings.attack)
    poisoned = attack.poison(data.train, seed=settings.seed)
    with torch.random.fork_rng(devices=[]):  # leaves the seeded RNG as it was
        _model_factory(settings, data)()  # the model's options and --init-weights fail here, before any write
    folder.begin(run_fingerprint(settings, data, sd), resume=resume, overwrite=overwrite, start=start)
    write_text_atomic(out / "config.yaml", dump_yaml(settings.model_dump(mode="json")))
    return data, attack, poisoned, attack.backdoor_test_set(data.test)


def _model_factory(settings: BackdoorRunSettings, data: Any, *, init: bool = True) -> Callable[..., torch.nn.Module]:
    c, h, _ = data.image_shape

    def new(arch: str | None = None) -> torch.nn.Module:
        if arch is not None and arch != settings.model:  # another architecture (e.g. the SD module's model)
            return build_model(arch, data.num_classes, image_size=h, in_channels=c, mean=data.mean, std=data.std)
        return build_model(settings.model, data.num_classes, image_size=h, in_channels=c, mean=data.mean,
                           std=data.std, weights=settings.init_weights if init else None, **settings.model_options)

    return new


def _backdoored_key(settings: BackdoorRunSettings, data: Any, model: torch.nn.Module) -> dict[str, Any]:
    """What a backdoored model depends on: the run's fingerprint without its defense, with the precision its
    training settings resolve to here."""
    key = {k: v for k, v in run_fingerprint(settings, data).items() if k != "defense"}
    precision = resolve_precision(settings.train.amp, resolve_device(settings.train.device), model)
    return {**key, "precision": precision.dtype}


def _split_outputs(out: Path, split: Split, poisoned: Any, name: str, score: str | None = None) -> dict[str, Any]:
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
    folder = prepare_out(out, resume=resume, overwrite=overwrite)
    try:
        return _run_backdoor(settings, folder, resume=resume, overwrite=overwrite, start=start)
    finally:
        folder.release()


def _run_backdoor(settings: BackdoorRunSettings, folder: RunFolder, *, resume: bool, overwrite: bool,
                  start: float) -> RunResult:
    from advml.backdoor.defenses import DefenseContext, build_defense, untrusted_view
    from advml.backdoor.defenses.base import oracle_clean_subset

    out = folder.path
    data, attack, poisoned, backdoor_test = _setup(settings, folder, resume=resume, overwrite=overwrite, start=start)
    defense = build_defense(settings.defense)
    new_model = _model_factory(settings, data)
    evals = {"clean_acc": data.test} if backdoor_test is None else {"clean_acc": data.test, "asr": backdoor_test}
    metrics: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    backdoored = None
    cached: dict[str, Any] | None = None
    timing: dict[str, Any] = {}
    if defense.needs_backdoored_model:
        torch.manual_seed(settings.seed)
        backdoored = new_model()
        key = _backdoored_key(settings, data, backdoored) if settings.reuse_backdoored else None
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
            clean, _ = oracle_clean_subset(poisoned, defense.settings.clean_fraction, settings.seed)
            metrics["clean_subset"] = {"size": len(clean), "fraction": defense.settings.clean_fraction,
                                       "source": "truly clean training samples (oracle)"}
        torch.manual_seed(settings.seed + 1)
        ctx = DefenseContext(new_model=_model_factory(settings, data, init=False), backdoored=backdoored,
                             seed=settings.seed, device=settings.train.device, amp=settings.train.amp,
                             progress=settings.train.progress,
                             checkpoint_dir=out / "checkpoints" / "defense", resume=resume,
                             train_config=settings.train, clean_data=clean)
        log.info("advml: defense %s", defense.name)
        result = defense.run(untrusted_view(poisoned), ctx)  # no test data, no poison flags
        model = result.model
        if result.split is not None:
            metrics.update(_split_outputs(out, result.split, poisoned, attack.name, result.report.get("score_name")))
        metrics.update(result.report.get("metrics", {}))  # a defense's own extra keys (JSON values)
        metrics["defense_history"] = result.report.get("history")
        metrics["clean_acc"] = accuracy(model, data.test)
        metrics["asr"] = attack_success_rate(model, backdoor_test) if backdoor_test is not None else None
    else:
        metrics["clean_acc"], metrics["asr"] = final["clean_acc"], final.get("asr")
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
    write_json(out / "timing.json", {"seconds": folder.scope.seconds(), **timing})  # every process, summed
    write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return RunResult(out, metrics)


def run_detect(settings: BackdoorRunSettings, sd: SDSettings, out: str | Path, *, resume: bool = False,
               overwrite: bool = False) -> RunResult:
    """The SD module alone: poison, train the SD model, FCT-score, split; write split, metrics, histogram."""
    start = time.perf_counter()
    folder = prepare_out(out, resume=resume, overwrite=overwrite, kind="detect")
    try:
        return _run_detect(settings, sd, folder, resume=resume, overwrite=overwrite, start=start)
    finally:
        folder.release()


def _run_detect(settings: BackdoorRunSettings, sd: SDSettings, folder: RunFolder, *, resume: bool, overwrite: bool,
                start: float) -> RunResult:
    from advml.backdoor.defenses import distinguish, untrusted_view

    out = folder.path
    data, attack, poisoned, _ = _setup(settings, folder, resume=resume, overwrite=overwrite, start=start, sd=sd)
    write_text_atomic(out / "sd.yaml", dump_yaml(sd.model_dump(mode="json")))
    torch.manual_seed(settings.seed + 1)
    model = _model_factory(settings, data, init=False)(sd.model)
    split = distinguish(model, untrusted_view(poisoned), sd, seed=settings.seed, device=settings.train.device,
                        amp=settings.train.amp, progress=settings.train.progress, checkpoint_dir=out / "checkpoints",
                        resume=resume)
    metrics = {**_split_outputs(out, split, poisoned, attack.name), "poison_count": int(poisoned.poison_flags.sum()),
               "train_size": len(poisoned)}
    write_json(out / "timing.json", {"seconds": folder.scope.seconds()})
    write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return RunResult(out, metrics)
