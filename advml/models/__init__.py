"""Models: a registry of architectures wrapped as ImageClassifiers ([0,1] in, `features()` out)."""

from advml.models.registry import MODELS, build_model, load_weights
from advml.models.wrapper import ImageClassifier

__all__ = ["MODELS", "ImageClassifier", "build_model", "load_weights"]
