"""The offline model zoo: surrogate and target models trained once per (dataset, architecture) with the one
Trainer and cached as safetensors, so that transfer is measured on real models without downloads."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator

from advml.config import Seed, Settings, deep_merge, validate
from advml.data.registry import DatasetSplits
from advml.errors import DataError
from advml.metrics import accuracy
from advml.model_cache import load_entry, write_entry
from advml.models import ImageClassifier, build_model
from advml.provenance import RunScope, run_scope
from advml.train import TrainConfig, Trainer
from advml.utils.precision import AmpField, Precision, resolve_precision, set_precision
from advml.utils.runtime import cache_dir, resolve_device

DEFAULT_ARCHS = ("resnet18_narrow", "cnn_small", "vgg16_bn", "mobilenet_v2")  # four families


class ZooSettings(Settings):
    """How zoo models are trained (the key of their cache entry)."""

    epochs: int = Field(30, ge=1)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(128, ge=1)
    augment: str = "standard"
    train_size: int | None = Field(None, ge=1, description="None: the whole training set")
    seed: Seed = 0
    amp: AmpField = Field("auto", description="training precision: auto (bf16 + channels_last where the device "
                            "has bf16 units), true or false; the precision it resolves to is part of the entry's key")
    train: dict[str, Any] = Field(default_factory=dict, description="further training settings (the trainer's), "
                                  "e.g. the fast recipe's {schedule: onecycle, label_smoothing: 0.2}")
    models: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per architecture, settings over "
                                              "these (e.g. vit_tiny: {lr: 0.001, train: {optimizer: adam}}); only "
                                              "an architecture's own enter its entry's key")

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        own = {"epochs", "lr", "batch_size", "augment", "amp", "progress"} & set(v)
        if own:
            raise ValueError(f"set {sorted(own)} as zoo settings, not under train")
        validate(TrainConfig, v, "zoo.train")  # unknown names and bad values fail here, with suggestions
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from advml.models import MODELS

        for arch, over in v.items():
            MODELS.get(arch)
            if "models" in over:
                raise ValueError(f"zoo.models.{arch} cannot nest 'models'")
        return v

    def for_arch(self, arch: str) -> ZooSettings:
        """The settings one architecture trains with: its own overrides merged, the others' dropped."""
        if not self.models:
            return self
        base = self.model_dump(mode="json", exclude={"models"})
        return validate(ZooSettings, deep_merge(base, self.models.get(arch, {})), f"zoo.models.{arch}")

    def config(self, progress: bool = True) -> TrainConfig:
        """The trainer's settings for a zoo model."""
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, augment=self.augment,
                           amp=self.amp, progress=progress, **self.train)


def _precision(settings: ZooSettings) -> Precision:
    """The precision a zoo model of `settings` trains (and later runs) in on this machine."""
    return resolve_precision(settings.amp, resolve_device("auto"))


def entry(data: DatasetSplits, arch: str, settings: ZooSettings) -> Path:
    """The cache folder of one zoo model: readable dataset name, architecture and settings (with the precision
    they resolve to here), plus a hash of the data's resolved path and content (so two files typed alike, or one
    file changed, never share an entry)."""
    settings = settings.for_arch(arch)
    dtype = {"bfloat16": "bf16", "float32": "fp32"}[_precision(settings).dtype]
    key = f"e{settings.epochs}-lr{settings.lr}-b{settings.batch_size}-{settings.augment}-n{settings.train_size}" \
          f"-s{settings.seed}-{dtype}"
    if settings.train:  # a recipe: its settings' hash (entries without one keep their names)
        key += "-t" + hashlib.sha256(json.dumps(settings.train, sort_keys=True).encode()).hexdigest()[:8]
    readable = data.name.split(":")[0] + (f"_{Path(data.source).name}" if data.source else "")
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", readable)[:80]
    return cache_dir() / "zoo" / safe / arch / f"{key}-d{data.fingerprint()[:16]}"


def _provenance(data: DatasetSplits, arch: str, settings: ZooSettings) -> dict[str, Any]:
    """What a zoo entry was made from; recorded in its info.json and checked whenever it is read."""
    return {"arch": arch, "dataset": data.name, "source": data.source, "data_fingerprint": data.fingerprint(),
            "settings": settings.model_dump(mode="json"), "precision": _precision(settings).dtype}


def zoo_model(data: DatasetSplits, arch: str, settings: ZooSettings | None = None, *, train: bool = True,
              progress: bool = True) -> tuple[ImageClassifier, dict]:
    """The cached model for (dataset, arch, settings), trained (resumably) on first use; with its info."""
    settings = (settings or ZooSettings()).for_arch(arch)
    folder = entry(data, arch, settings)
    made_from = _provenance(data, arch, settings)
    c, h, _ = data.image_shape
    torch.manual_seed(settings.seed)
    model = build_model(arch, data.num_classes, image_size=h, in_channels=c, mean=data.mean, std=data.std)
    info = load_entry(model, folder, made_from, what="zoo entry")
    if info is not None:
        # the precision its training left it in, so that a cached model behaves as a freshly trained one
        set_precision(model, resolve_precision(settings.amp, resolve_device("auto"), model))
        return model.eval(), info
    if not train:
        raise DataError(f"no zoo model {arch} for {data.name} in {folder}")
    config = settings.config(progress)
    train_set = data.train
    if settings.train_size is not None and settings.train_size < len(train_set):
        from advml.data.base import stratified_indices

        idx = stratified_indices(train_set.labels, settings.train_size, data.num_classes,
                                 torch.Generator().manual_seed(settings.seed))
        train_set = train_set.subset(idx)
    # the entry's checkpoints carry, and are checked against, what it is made from
    with run_scope(RunScope(folder, made_from, hint=f"delete {folder} to retrain it")):
        Trainer(model, config, seed=settings.seed, checkpoint_dir=folder / "checkpoints").fit(train_set, resume=True)
    info = {**made_from, "clean_acc": accuracy(model, data.test)}
    write_entry(folder, model, info, {"arch": arch})
    return model.eval(), info
