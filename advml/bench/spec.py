"""Bench specs: a grid of runs (backdoor or transfer) with per-scale presets and the layout of its table."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from advml.config import Settings, deep_merge, load_yaml, nest, validate
from advml.errors import ConfigError

PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")


def plain_name(name: str, what: str) -> str:
    """`name` if it is a plain file name (letters, digits, . _ + -; no folders, no '..'), else a ConfigError."""
    if not PLAIN.match(name) or ".." in name:
        raise ConfigError(f"{what} must be a plain file name (letters, digits, '.', '_', '+', '-'; no folders, no "
                          f"'..'), got {name!r}")
    return name


def value_word(value: Any) -> str:
    """A grid value as one word (cell ids, labels, overrides, paper values): itself, or for a mapping such as an
    attack with its settings, 'name(key=value,...)' ({name: badnets, mode: all2all} -> 'badnets(mode=all2all)')."""
    if isinstance(value, dict):
        rest = ",".join(f"{k}={v}" for k, v in value.items() if k != "name")
        return f"{value.get('name', '')}({rest})" if rest else str(value.get("name", ""))
    return str(value)


class Der(Settings):
    """BackdoorBench's defense effectiveness rating against a row's no-defense cell: DER = [max(0, ASR_before -
    ASR) - max(0, ACC_before - ACC) + 1] / 2, in [0, 1], higher is better (Zhu et al., ICCV 2023, eq. 7)."""

    base: dict[str, Any] = Field(description="the column of the no-defense cells, e.g. {defense.name: none}")
    acc: str = "clean_acc"
    asr: str = "asr"


class Table(Settings):
    """How cells become a table: row and column keys (grid keys) and the metrics shown in each cell."""

    rows: list[str]
    columns: list[str] = Field(default_factory=list)
    values: dict[str, str] = Field(description="metric path -> column label; a path ending in '.*' expands to "
                                               "every key of that metric mapping")
    figures: list[str] = Field(default_factory=list, description="PNG files of a cell folder to show (plain file "
                                                                  "names: no folders, no '..')")
    mean_over: list[str] = Field(default_factory=list, description="grid keys averaged away (e.g. [seed]): a cell "
                                 "shows mean ± sd over them")
    percent: bool = Field(False, description="show the values (and DER) in percent, as the papers do")
    average: bool | list[str] = Field(False, description="an Avg row: each column's mean over every row, or over "
                                                         "the rows of these words (e.g. the paper's attacks)")
    der: Der | None = Field(None, description="a DER column after each defense's values")
    paper: dict[str, dict[str, dict[str, float]]] = Field(
        default_factory=dict, description="the paper's values, shown beside ours: row word -> column word -> metric "
                                          "path -> value in the table's unit (words: see value_word; ' / ' joins "
                                          "several keys)")
    paper_source: str = Field("", description="where the paper's values come from (shown under the table)")
    paired_base: str | None = Field(None, description="transfer: the method that every method without a '+' base "
                                    "is also compared with on the same images (e.g. mi-ti-di); display only")
    plots: list[Literal["success_vs_iterations", "success_vs_cost"]] = Field(
        default_factory=list, description="transfer: bench figures, a line per method (mean success over the "
                                          "targets against iterations, or against passes per image)")

    @field_validator("figures")
    @classmethod
    def _plain_names(cls, v: list[str]) -> list[str]:
        for name in v:
            plain_name(name, "a figure")
        return v


class Scale(Settings):
    """One preset of a spec (smoke, cpu, paper): settings under every cell and what a cell may request."""

    preset: str | None = Field(None, description="a packaged run preset (`advml presets`) under `settings`")
    settings: dict[str, Any] = Field(default_factory=dict, description="run settings shared by every cell")
    cpus: float = Field(1, gt=0, description="CPUs a cell requests from Ray")
    gpus: float = Field(0, ge=0, description="GPUs a cell requests from Ray")
    grid: dict[str, list[Any] | None] = Field(default_factory=dict, description="grid keys replaced at this scale "
                                              "(null removes a key of the spec's grid)")
    models: list[str] | None = Field(None, description="transfer: the zoo at this scale (default: the spec's)")
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict, description="'key=value' -> settings for "
                                                 "the cells with that grid value, e.g. 'attack.name=badnets'")
    hours: float | None = Field(None, ge=0, description="expected wall hours of the whole grid (documentation)")
    table: Table | None = Field(None, description="this scale's own table layout (default: the spec's)")


class BenchSpec(Settings):
    """A grid of runs and its table (`configs/seed/*.yaml`)."""

    name: str
    title: str = ""
    kind: str = Field(description="the experiment each cell runs: backdoor, detect or transfer (advml.experiments)")
    grid: dict[str, list[Any]] = Field(description="dotted setting -> values; the cells are their product")
    models: list[str] | None = Field(None, description="transfer: the zoo; each cell's targets are the models "
                                                       "other than its surrogate")
    presets: dict[str, Scale]
    table: Table
    labels: dict[str, str] = Field(default_factory=dict, description="display names in the report: a grid key "
                                   "('attack.name': attack) or 'key=value' ('method=mi-ti-di': MI-TI-DI); default: "
                                   "the registry's title of the value, else the value")

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        from advml.experiments import EXPERIMENTS

        EXPERIMENTS.get(v)
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return plain_name(v, "a spec name")  # it names the bench folder runs/bench/<name>-<preset>

    @field_validator("presets")
    @classmethod
    def _presets(cls, v: dict[str, Scale]) -> dict[str, Scale]:
        for name in v:
            plain_name(name, "a preset name")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not v or any(not values for values in v.values()):
            raise ConfigError("the grid needs at least one key, each with at least one value")
        return v

    def scale(self, preset: str) -> Scale:
        """The named preset, or a clear error listing the spec's presets."""
        if preset not in self.presets:
            raise ConfigError(f"spec {self.name!r} has no preset {preset!r}; valid: {', '.join(self.presets)}")
        return self.presets[preset]

    def cells(self, preset: str) -> list[Cell]:
        """Every combination of the grid's values at `preset`, in grid order."""
        grid = {k: v for k, v in {**self.grid, **self.scale(preset).grid}.items() if v is not None}
        if any(not values for values in grid.values()):
            raise ConfigError(f"preset {preset!r} leaves a grid key without values")
        keys = list(grid)
        return [Cell(dict(zip(keys, values))) for values in itertools.product(*grid.values())]

    def identity(self, preset: str) -> dict[str, Any]:
        """What makes a bench folder this spec at `preset`, besides its cells' resolved run settings (the runner
        compares those): its cells, zoo and table. Other presets, the title and scheduling hints (cpus, gpus,
        hours) may change without making a folder another bench."""
        return {"name": self.name, "kind": self.kind, "cells": [c.params for c in self.cells(preset)],
                "models": self.models_at(preset), "preset": preset,
                "table": self.table_at(preset).model_dump(mode="json", exclude={"paired_base"})}

    def label(self, key: str, value: Any = None) -> str:
        """The display name of a grid key (value None) or of one of its values."""
        if value is None:
            return self.labels.get(key) or (key[:-5] if key.endswith(".name") else key)
        word = value_word(value)
        if f"{key}={word}" in self.labels:
            return self.labels[f"{key}={word}"]
        registry = _registry_of(key)
        name = value.get("name") if isinstance(value, dict) else value
        if registry is None or not isinstance(name, str) or name not in registry:
            return word
        rest = word[len(name) + 1:-1] if word != name else ""
        return registry.title(name) + (f" ({rest})" if rest else "")

    def table_at(self, preset: str) -> Table:
        """The table layout at `preset`."""
        return self.scale(preset).table or self.table

    def models_at(self, preset: str) -> list[str] | None:
        """The transfer zoo at `preset`."""
        return self.scale(preset).models or self.models


def _registry_of(key: str) -> Any:
    """The registry whose names a grid key takes (attack.name -> the attacks), for their display names."""
    if key in ("attack.name", "attack"):
        from advml.backdoor.attacks import ATTACKS

        return ATTACKS
    if key in ("defense.name", "defense"):
        from advml.backdoor.defenses import DEFENSES

        return DEFENSES
    if key in ("model", "surrogate"):
        from advml.models import MODELS

        return MODELS
    if key == "dataset":
        from advml.data import DATASETS

        return DATASETS
    return None


class Cell:
    """One grid point: its parameters, a stable folder name, and its run settings."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    @property
    def id(self) -> str:
        """A readable, filesystem-safe, unique name: values joined, plus a short hash of the parameters."""
        words = "_".join(re.sub(r"[^A-Za-z0-9._+-]+", "-", value_word(v)) for v in self.params.values())
        digest = hashlib.sha1(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:6]
        return f"{words}-{digest}"

    def overrides(self) -> dict[str, Any]:
        """The parameters as a nested settings mapping ('attack.name': x -> {'attack': {'name': x}})."""
        return nest(self.params)

    def settings(self, spec: BenchSpec, preset: str) -> dict[str, Any]:
        """The cell's run settings: the preset's shared settings under the cell's own parameters."""
        scale = spec.scale(preset)
        data = dict(scale.settings)
        for key, value in self.params.items():
            data = deep_merge(data, scale.overrides.get(f"{key}={value_word(value)}", {}))
        data = deep_merge(data, self.overrides())
        models = spec.models_at(preset)
        if spec.kind == "transfer" and models is not None and "targets" not in self.params:
            data["targets"] = [m for m in models if m != data.get("surrogate")]
        return data


def load_spec(path: str | Path) -> BenchSpec:
    """A spec file, validated (unknown keys get the closest valid one suggested)."""
    return validate(BenchSpec, load_yaml(path), str(path))
