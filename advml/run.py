"""A run is "settings in, folder out": `run_backdoor(settings)` poisons, trains, evaluates and writes
`config.yaml`, `metrics.json`, `model.safetensors` and checkpoints. The CLI and the demo call it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator

from advml.backdoor.attacks import build_attack
from advml.config import Settings, dump_yaml, load_yaml, validate
from advml.data import load_dataset
from advml.errors import ConfigError
from advml.metrics import stealth
from advml.models import build_model
from advml.train import Trainer, TrainConfig
from advml.utils.io import save_tensors, write_json, write_text_atomic
from advml.utils.runtime import seed_everything

METRIC_KEYS = ("clean_acc", "asr", "psnr", "linf", "ssim")
STEALTH_SAMPLE = 1000  # poisoned images used for PSNR / l-inf / SSIM


class BackdoorRunSettings(Settings):
    """Everything a backdoor run uses; written back, defaults included, as the run's config.yaml."""

    dataset: str = "sample"
    data_dir: str | None = None
    train_size: int | None = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1)
    download: bool = Field(True, description="allow torchvision downloads when files are missing")
    model: str = "cnn_small"
    model_options: dict[str, Any] = Field(default_factory=dict)
    init_weights: str | None = Field(None, description="start training from these weights (safetensors, or a "
                                                       "torch file read with weights_only=True)")
    attack: dict[str, Any] = Field(default_factory=lambda: {"name": "badnets"})
    defense: str = "none"
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = 0

    @field_validator("attack")
    @classmethod
    def _attack_settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        return build_attack(v if "name" in v else {"name": "badnets", **v}).describe()

    @field_validator("defense")
    @classmethod
    def _defense(cls, v: str) -> str:
        if v != "none":
            raise ConfigError(f"unknown defense {v!r}; valid: none")
        return v


@dataclass
class RunResult:
    """Where a run wrote its files, and its metrics."""

    out: Path
    metrics: dict[str, Any]


def load_settings(config: str | Path | None = None, overrides: dict[str, Any] | None = None) -> BackdoorRunSettings:
    """Defaults < YAML file < overrides, validated."""
    from advml.config import deep_merge

    data = load_yaml(config) if config else {}
    return validate(BackdoorRunSettings, deep_merge(data, overrides or {}))


def prepare_out(out: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Check the output folder before any work starts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        raise ConfigError(f"--out {out} already holds files; pass --resume to continue that run "
                          "or --overwrite to replace it")
    return out


def run_backdoor(settings: BackdoorRunSettings, out: str | Path, *, resume: bool = False,
                 overwrite: bool = False) -> RunResult:
    """Poison the training set, train on it, and measure clean accuracy, ASR and trigger stealth."""
    out = prepare_out(out, resume=resume, overwrite=overwrite)
    if resume and (out / "config.yaml").is_file():
        previous = validate(BackdoorRunSettings, load_yaml(out / "config.yaml"))
        if previous != settings:
            raise ConfigError(f"{out}/config.yaml differs from the settings given; resume with the same ones")
    start = time.perf_counter()
    seed_everything(settings.seed)
    data = load_dataset(settings.dataset, settings.data_dir, train_size=settings.train_size,
                        test_size=settings.test_size, seed=settings.seed, download=settings.download)
    attack = build_attack(settings.attack)
    poisoned = attack.poison(data.train, seed=settings.seed)
    backdoor_test = attack.backdoor_test_set(data.test)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", dump_yaml(settings.model_dump(mode="json")))

    torch.manual_seed(settings.seed)
    c, h, w = data.image_shape
    model = build_model(settings.model, data.num_classes, image_size=h, in_channels=c, mean=data.mean,
                        std=data.std, weights=settings.init_weights, **settings.model_options)
    trainer = Trainer(model, settings.train, seed=settings.seed, checkpoint_dir=out / "checkpoints")
    evals = {"clean_acc": data.test} if backdoor_test is None else {"clean_acc": data.test, "asr": backdoor_test}
    history = trainer.fit(poisoned, evals, resume=resume)
    save_tensors(out / "model.safetensors", model.state_dict(), {"model": settings.model})

    has_poison = bool(poisoned.poison_flags.any())
    metrics: dict[str, Any] = {
        "clean_acc": history[-1]["clean_acc"],
        "asr": history[-1].get("asr"),  # None without an attack
        **(stealth(*poisoned.poisoned_pairs(limit=STEALTH_SAMPLE)) if has_poison
           else {"psnr": None, "linf": None, "ssim": None}),
        "poison_count": int(poisoned.poison_flags.sum()),
        "train_size": len(poisoned),
        "test_size": len(data.test),
        "backdoor_test_size": len(backdoor_test) if backdoor_test is not None else 0,
        "history": history,
    }
    write_json(out / "metrics.json", metrics)
    write_json(out / "timing.json", {"seconds": time.perf_counter() - start})
    return RunResult(out, metrics)
