"""advml: a PyTorch toolkit for adversarial machine learning (backdoor attacks and defenses, transfer attacks)."""

from importlib import metadata

try:
    __version__ = metadata.version("advml")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
