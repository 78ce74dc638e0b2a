"""Seeding, device selection and the cache folder."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from advml.errors import ConfigError


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded with `seed` for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; any other value must name an available device."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev


CACHE_ENV = "ADVML_CACHE_DIR"


def cache_dir() -> Path:
    """Where trained models are cached (the zoo, ISSBA encoders, reused backdoored models): $ADVML_CACHE_DIR, else
    ~/.cache/advml."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "advml")
