"""Shared fixtures: the bundled sample, and the real data folder found through ADVML_DATA_DIR."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import pytest

from advml.data import load_dataset

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers, importable from every test folder


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder of ../shared/data (cifar10.npz, cifar10_jpeg.npz, triggers/), or skip."""
    env = os.environ.get("ADVML_DATA_DIR")
    if not env or not (Path(env) / "cifar10.npz").is_file():
        pytest.skip("real data not found: set ADVML_DATA_DIR to the folder holding cifar10.npz")
    return Path(env)


@pytest.fixture(scope="session")
def triggers_dir(data_dir: Path) -> Path:
    """The trigger files folder, or skip."""
    d = data_dir / "triggers"
    if not d.is_dir():
        pytest.skip("no triggers/ folder in ADVML_DATA_DIR")
    return d


@pytest.fixture(scope="session")
def bundled_triggers() -> Path:
    """The trigger files shipped in the package (what the attacks' defaults read); never skips."""
    return Path(str(resources.files("advml.backdoor") / "assets" / "triggers"))


@pytest.fixture(scope="session")
def sample():
    """The bundled real CIFAR-10 sample (2,000 train / 500 test)."""
    return load_dataset("sample")
