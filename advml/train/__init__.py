"""The one training loop (`Trainer`) and its settings (`TrainConfig`)."""

from advml.train.config import Batch, LossFn, Phase, TrainConfig, cross_entropy
from advml.train.trainer import BEST_NAME, CHECKPOINT_NAME, Trainer

__all__ = ["BEST_NAME", "CHECKPOINT_NAME", "Batch", "LossFn", "Phase", "TrainConfig", "Trainer", "cross_entropy"]
