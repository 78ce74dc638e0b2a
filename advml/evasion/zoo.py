"""The offline model zoo: surrogate and target models trained once per (dataset, architecture) with the one
Trainer and cached as safetensors, so that transfer is measured on real models without downloads."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pydantic import Field

from advml.config import Settings
from advml.data.registry import DatasetSplits
from advml.metrics import accuracy
from advml.models import ImageClassifier, build_model, load_weights
from advml.train import TrainConfig, Trainer
from advml.utils.io import load_json, save_tensors, write_json

CACHE_ENV = "ADVML_CACHE_DIR"
DEFAULT_ARCHS = ("resnet18_narrow", "cnn_small", "vgg16_bn", "mobilenet_v2")  # four families


class ZooSettings(Settings):
    """How zoo models are trained (the key of their cache entry)."""

    epochs: int = Field(30, ge=1)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(128, ge=1)
    augment: str = "standard"
    train_size: int | None = Field(None, ge=1, description="None: the whole training set")
    seed: int = 0


def cache_dir() -> Path:
    """$ADVML_CACHE_DIR, else ~/.cache/advml."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "advml")


def entry(dataset: str, arch: str, settings: ZooSettings) -> Path:
    """The cache folder of one zoo model."""
    key = f"e{settings.epochs}-lr{settings.lr}-b{settings.batch_size}-{settings.augment}-n{settings.train_size}" \
          f"-s{settings.seed}"
    safe = dataset.replace("/", "_").replace(":", "_")
    return cache_dir() / "zoo" / safe / arch / key


def zoo_model(data: DatasetSplits, arch: str, settings: ZooSettings | None = None, *, train: bool = True,
              progress: bool = True) -> tuple[ImageClassifier, dict]:
    """The cached model for (dataset, arch, settings), trained (resumably) on first use; with its info."""
    settings = settings or ZooSettings()
    folder = entry(data.name, arch, settings)
    c, h, _ = data.image_shape
    torch.manual_seed(settings.seed)
    model = build_model(arch, data.num_classes, image_size=h, in_channels=c, mean=data.mean, std=data.std)
    if (folder / "model.safetensors").is_file() and (folder / "info.json").is_file():  # model.safetensors: last
        return load_weights(model, folder / "model.safetensors").eval(), load_json(folder / "info.json")
    if not train:
        raise FileNotFoundError(f"no zoo model {arch} for {data.name} in {folder}")
    config = TrainConfig(epochs=settings.epochs, lr=settings.lr, batch_size=settings.batch_size,
                         augment=settings.augment, progress=progress)
    train_set = data.train
    if settings.train_size is not None and settings.train_size < len(train_set):
        from advml.data.base import balanced_indices

        idx = balanced_indices(train_set.labels, settings.train_size, data.num_classes,
                               torch.Generator().manual_seed(settings.seed))
        train_set = train_set.subset(idx)
    Trainer(model, config, seed=settings.seed, checkpoint_dir=folder / "checkpoints").fit(train_set, resume=True)
    info = {"arch": arch, "dataset": data.name, "clean_acc": accuracy(model, data.test),
            "settings": settings.model_dump()}
    write_json(folder / "info.json", info)  # the model file is written last: it marks a finished entry
    save_tensors(folder / "model.safetensors", model.state_dict(), {"arch": arch})
    return model.eval(), info
