"""What every experiment shares: the run folder's preparation, settings layering (defaults < packaged preset <
YAML file < overrides), the resume check, the model factory, `RunResult`, and the `EXPERIMENTS` registry that the
CLI and the bench use to find each kind's settings and run function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advml.config import Settings, deep_merge, load_yaml, validate
from advml.errors import ConfigError
from advml.models import build_model
from advml.provenance import refuse_mismatch, train_key
from advml.registry import Registry
from advml.utils.rundir import RunFolder, open_run

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"
PRESETS: Registry[Path] = Registry("preset")
for _file in sorted(PRESET_DIR.glob("*.yaml")):
    PRESETS.add(_file.stem, _file, _file.read_text().splitlines()[0].lstrip("# "))


@dataclass
class RunResult:
    """Where a run wrote its files, and its metrics."""

    out: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """One kind of run: its settings class, how its settings are layered, how it runs, and its presets' kind."""

    name: str
    settings: type[Settings]
    load: Callable[..., Settings]  # (config, overrides, *, preset) -> settings
    run: Callable[..., RunResult]  # (settings, out, *, resume, overwrite) -> RunResult
    preset_kind: str
    resumable: bool = True  # a killed run continues from its checkpoints (else a bench cell reruns it whole)
    files: tuple[tuple[str, str], ...] = ()  # (settings key, file) when the settings are recorded in several files

    def run_cell(self, settings: Settings, folder: Path) -> RunResult:
        """Run into a bench cell's folder: continue a killed run from its checkpoints, or start it again."""
        if self.resumable:
            return self.run(settings, folder, resume=folder.is_dir())
        return self.run(settings, folder, overwrite=True)

    def recorded(self, folder: Path) -> dict[str, Any] | None:
        """The settings a run in `folder` recorded (None when it recorded none)."""
        if not self.files:
            path = folder / "config.yaml"
            return load_yaml(path) if path.is_file() else None
        if not all((folder / f).is_file() for _, f in self.files):
            return None
        return {key: load_yaml(folder / f) for key, f in self.files}


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def preset_kind(name: str) -> str:
    """The kind of run a packaged preset is for (its `kind:`, backdoor when absent)."""
    return str(load_yaml(PRESETS.get(name)).get("kind", "backdoor"))


def preset_settings(name: str, kind: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A packaged preset's settings, over those of the preset it `extends` (one home for a shared recipe); a preset
    names its `kind` (backdoor when absent) and is refused for runs of another kind."""
    if name in chain:
        raise ConfigError(f"preset {name!r} extends itself (through {' -> '.join(chain)})")
    data = load_yaml(PRESETS.get(name))
    given = data.pop("kind", "backdoor")
    if given != kind:
        raise ConfigError(f"preset {name!r} is for {given} runs, not {kind} runs; see `advml presets`")
    parent = data.pop("extends", None)
    return deep_merge(preset_settings(str(parent), kind, (*chain, name)), data) if parent else data


def layers(config: str | Path | None, overrides: dict[str, Any] | None, preset: str | None,
           kind: str) -> dict[str, Any]:
    """Packaged preset < YAML file < overrides, merged (the settings class adds the defaults beneath)."""
    data = preset_settings(preset, kind) if preset else {}
    data = deep_merge(data, load_yaml(config)) if config else data
    return deep_merge(data, overrides or {})


def prepare_out(out: str | Path, kind: str, *, resume: bool, overwrite: bool) -> RunFolder:
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


def model_factory(data: Any, arch: str, *, options: dict[str, Any] | None = None,
                  weights: str | None = None) -> Callable[..., torch.nn.Module]:
    """`new()` builds `arch` for `data` (its classes, image size, normalisation) with `options` and initial
    `weights`; `new(other)` builds another architecture with its defaults (e.g. the SD module's model)."""
    c, h, _ = data.image_shape

    def new(other: str | None = None) -> torch.nn.Module:
        if other is not None and other != arch:
            return build_model(other, data.num_classes, image_size=h, in_channels=c, mean=data.mean, std=data.std)
        return build_model(arch, data.num_classes, image_size=h, in_channels=c, mean=data.mean, std=data.std,
                           weights=weights, **(options or {}))

    return new
