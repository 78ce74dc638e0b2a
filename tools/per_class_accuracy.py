"""Per-class clean test accuracy of finished bench cells, from each cell's config.yaml and model.safetensors.

Usage: ADVML_DATA_DIR=../shared/data python tools/per_class_accuracy.py results/<bench>/cells/<id> [...]"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from advml.data.registry import load_dataset
from advml.metrics import predict
from advml.models.registry import build_model


def per_class(cell: Path) -> tuple[float, list[float]]:
    """Overall and per-class clean test accuracy of the model a cell saved (float32, the cell's dataset)."""
    config = yaml.safe_load((cell / "config.yaml").read_text())
    data = load_dataset(config["dataset"], config.get("data_dir"), test_size=config.get("test_size"),
                        seed=config.get("seed", 0), download=False)
    model = build_model(config["model"], data.test.num_classes, mean=data.mean, std=data.std,
                        weights=cell / "model.safetensors", **(config.get("model_options") or {})).eval()
    labels, preds = data.test.labels, predict(model, data.test, device="cpu")
    classes = range(data.test.num_classes)
    return (preds == labels).float().mean().item(), [(preds[labels == c] == c).float().mean().item() for c in classes]


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        overall, accs = per_class(Path(arg))
        print(f"{Path(arg).name}: all {overall:.4f} | per class " + " ".join(f"{a:.3f}" for a in accs))
