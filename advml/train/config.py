"""What the training loop takes: its settings (`TrainConfig`), the batch a loss sees and the default loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, NamedTuple

from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from advml.config import Settings
from advml.data.base import ImageDataset
from advml.utils.precision import AmpField, at_least_float32

# the training hyperparameters' types, declared once: TrainConfig's fields and every defense stage's that feeds one
Epochs = Annotated[int, Field(ge=1)]
BatchSize = Annotated[int, Field(ge=1)]
LearningRate = Annotated[float, Field(gt=0)]
Momentum = Annotated[float, Field(ge=0, lt=1)]
WeightDecay = Annotated[float, Field(ge=0)]
Augment = Literal["standard", "none"]


class TrainConfig(Settings):
    """Training settings; defaults are BackdoorBench's CIFAR ones (SGD 0.01, momentum 0.9, wd 5e-4, cosine)."""

    epochs: Epochs = 10
    batch_size: BatchSize = 128
    lr: LearningRate = 0.01
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4
    nesterov: bool = False
    schedule: Literal["cosine", "multistep", "constant", "onecycle"] = Field(
        "cosine", description="per epoch (cosine, multistep, constant) or per step (onecycle: linear from "
                              "onecycle_start x lr up to lr at onecycle_peak of training, down to onecycle_end x lr)")
    milestones: list[int] = Field(default_factory=list, description="epochs where multistep multiplies lr by gamma")
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up epochs before the schedule")
    onecycle_start: float = Field(0.2, ge=0)
    onecycle_peak: float = Field(0.23, gt=0, lt=1)
    onecycle_end: float = Field(0.07, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="of the default cross-entropy loss")
    norm_bias_lr_scale: float = Field(1.0, gt=0, description="lr multiplier for batch-norm shifts (weight decay "
                                                              "divided by it: the same decay per step)")
    lookahead_every: int = Field(0, ge=0, description="every k steps pull the weights to their slow average and "
                                                      "restart from it (0: off); airbench: 5")
    lookahead_decay: float = Field(0.95 ** 5, ge=0, lt=1, description="slow-average weight, ramped as "
                                                                     "decay x (step / total)^3")
    augment: Augment = Field("standard", description="random crop (pad crop_padding) + "
                                                                         "horizontal flip")
    crop_padding: int = Field(4, ge=0)
    rotation: float = Field(0.0, ge=0, le=180, description="standard augment: also rotate each image by up to "
                                                           "+-rotation degrees (BackdoorBench's WaNet recipe: 10)")
    pad_mode: Literal["zeros", "reflect"] = "zeros"
    flip: Literal["random", "alternating"] = Field("random", description="alternating: a fixed random half of "
                                                  "the images flipped in even epochs, the other half in odd ones")
    amp: AmpField = Field("auto", description="bf16 autocast + channels_last: auto (where the device has bf16 "
                                                "units), true or false")
    compile: bool = Field(False, description="torch.compile the model (falls back to eager with a warning)")
    device: str = "auto"
    eval_batch_size: BatchSize = 512
    eval_every: int = Field(1, ge=1, description="evaluate every k epochs (and always at the last, and every epoch "
                                                 "when a defense selects its epoch)")
    num_workers: int = Field(0, ge=0, description="loader processes for file-backed datasets")
    progress: bool = True


class Batch(NamedTuple):
    """What a loss function sees: (augmented) images, labels and the samples' dataset indices."""

    x: Tensor
    y: Tensor
    index: Tensor  # type: ignore[assignment]  # a field named like tuple.index (mypy flags the shadowing)


LossFn = Callable[[nn.Module, Batch], Tensor]
Phase = tuple[ImageDataset, LossFn]  # one pass over a dataset with its own loss, within an epoch


def cross_entropy(model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> Tensor:
    """The default loss: cross-entropy of the model's logits (float32)."""
    return F.cross_entropy(at_least_float32(model(batch.x)), batch.y, label_smoothing=label_smoothing)
