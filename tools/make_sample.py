"""Rebuild the bundled CIFAR-10 samples from cifar10_jpeg.npz (class-balanced, seeded).

Usage: python tools/make_sample.py [../shared/data/cifar10_jpeg.npz]
Writes advml/data/assets/cifar10_sample.npz (200 train + 50 test images per class: the `sample` dataset) and
cifar10_sample10k.npz (1,000 + 100 per class: `sample10k`, the demo's). The JPEG bytes are copied unchanged, so
the samples' pixels equal those of the full file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SAMPLES = {"cifar10_sample.npz": {"train": 200, "test": 50}, "cifar10_sample10k.npz": {"train": 1000, "test": 100}}


def write_sample(d: np.lib.npyio.NpzFile, per_class: dict[str, int], dst: Path) -> None:
    """One class-balanced sample of the JPEG file `d` to `dst`."""
    rng = np.random.default_rng(2026)
    out: dict[str, np.ndarray] = {"classes": d["classes"]}
    for split, k in per_class.items():
        y, off, blob = d[f"y_{split}"], d[f"offsets_{split}"], d[f"jpeg_{split}"]
        idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in range(10)]))
        pieces = [blob[off[i]:off[i + 1]] for i in idx]
        out[f"jpeg_{split}"] = np.concatenate(pieces)
        out[f"offsets_{split}"] = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
        out[f"y_{split}"] = y[idx]
        out[f"source_index_{split}"] = idx.astype(np.int32)
    np.savez_compressed(dst, **out)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB)")


def main(src: str) -> None:
    d = np.load(src, allow_pickle=False)
    assets = Path(__file__).resolve().parents[1] / "advml" / "data" / "assets"
    for name, per_class in SAMPLES.items():
        write_sample(d, per_class, assets / name)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cifar10_jpeg.npz")
