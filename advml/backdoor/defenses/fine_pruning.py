"""Fine-Pruning (Liu et al., RAID 2018): rank the channels of the backdoored model's last convolutional feature map
by their mean activation on clean data, prune the least active ones, then fine-tune on the clean data.

As BackdoorBench v2 (`defense/fp.py`) does, a pruned channel is masked at the input of the first linear layer
after the feature map (`torch.nn.utils.prune.custom_from_mask`, made permanent after fine-tuning): the map
reaches that layer only through pooling/flatten, so this is exactly removing the channel, and the model keeps its
architecture (its weights load into a fresh one). How many channels: `prune_ratio` when set (exactly
round(ratio * C)); else BackdoorBench's rule, steps of ceil(once_prune_ratio * C) channels while the accuracy
drops by less than acc_ratio (relative) — measured on the defender's clean subset, where BackdoorBench reads
the test set. Fine-tuning: BackdoorBench's cifar10 settings (100 epochs, SGD 0.01, cosine, batch 256)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import prune

from advml.backdoor.defenses.base import DEFENSES, Defense, DefenseContext, DefenseResult, DefenseSettings
from advml.backdoor.defenses.layers import Taps, backbone_children, child_output_shapes, require_clean
from advml.data.base import ImageDataset
from advml.errors import ConfigError
from advml.train.config import Augment, BatchSize, Epochs, LearningRate, Momentum, WeightDecay

PASS_THROUGH = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity,
                nn.ReLU, nn.Dropout)  # a zero channel stays zero through these


class FinePruningSettings(DefenseSettings):
    """BackdoorBench `config/defense/fp/cifar10.yaml`: ratio 0.05, acc_ratio 0.1, once_prune_ratio 0.01."""

    clean_fraction: float = Field(0.05, gt=0, lt=1, description="clean subset: this share of the training set, "
                                                                "drawn from truly clean samples (an oracle)")
    prune_ratio: float | None = Field(None, ge=0, lt=1, description="prune exactly this share of the channels; "
                                                                     "None: BackdoorBench's accuracy-tolerance rule")
    acc_ratio: float = Field(0.1, gt=0, lt=1, description="largest relative clean-subset accuracy drop allowed")
    once_prune_ratio: float = Field(0.01, gt=0, le=1, description="channels pruned per step of the rule")
    epochs: Epochs = Field(100, description="fine-tuning epochs on the clean subset")
    lr: LearningRate = 0.01
    batch_size: BatchSize = 256
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    augment: Augment = "standard"


@dataclass
class PruneSite:
    """The feature map pruned (backbone child `index`, C channels) and the linear layer its channels feed."""

    index: int
    channels: int
    linear: nn.Linear
    group: int  # input columns of `linear` per channel (H*W after pooling, 1 for global pooling)
    tail: nn.Module  # linear output -> logits

    def column_mask(self, pruned: Tensor) -> Tensor:
        """Bool (in_features,): False at the columns of the pruned channels (flatten is channel-major)."""
        keep = torch.ones(self.channels, dtype=torch.bool)
        keep[pruned] = False
        return keep.repeat_interleave(self.group)


def find_prune_site(model: nn.Module, x: Tensor) -> PruneSite:
    """The last backbone child with a spatial (H*W > 1) output, and the first linear layer after it."""
    children = backbone_children(model, "fine-pruning")
    shapes = child_output_shapes(model, x[:1], "fine-pruning")
    maps = [i for i, s in enumerate(shapes) if len(s) == 4 and s[2] * s[3] > 1] or \
        [i for i, s in enumerate(shapes) if len(s) == 4]
    if not maps:
        raise ConfigError("fine-pruning found no convolutional feature map in the backbone")
    index = maps[-1]
    after = children[index + 1:]
    j = next((k for k, m in enumerate(after) if isinstance(m, nn.Linear)), None)
    between = after if j is None else after[:j]
    if any(not isinstance(m, PASS_THROUGH) for m in between):
        raise ConfigError("fine-pruning needs only pooling/flatten/ReLU between the last feature map and a linear "
                          f"layer; found {[type(m).__name__ for m in between]}")
    linear = model.head if j is None else after[j]
    tail = nn.Identity() if j is None else nn.Sequential(*after[j + 1:], cast(nn.Module, model.head))
    if not isinstance(linear, nn.Linear) or linear.in_features % shapes[index][1]:
        raise ConfigError("fine-pruning: the layer after the last feature map is not a linear layer over its channels")
    return PruneSite(index, shapes[index][1], linear, linear.in_features // shapes[index][1], tail)


@torch.no_grad()
def clean_statistics(model: nn.Module, site: PruneSite, data: ImageDataset,
                     batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """(mean activation per channel of the feature map over images and positions, the linear layer's inputs)."""
    children = backbone_children(model, "fine-pruning")
    device = next(model.parameters()).device
    taps = Taps([children[site.index]])
    inputs: list[Tensor] = []
    handle = site.linear.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].float().cpu()))
    total = torch.zeros(site.channels, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for idx in torch.arange(len(data)).split(batch_size):
            model(data.get_batch(idx)[0].to(device))
            total += taps.outputs[0].double().sum((0, 2, 3)).cpu()  # type: ignore[union-attr]
            hw = taps.outputs[0].shape[2] * taps.outputs[0].shape[3]  # type: ignore[union-attr]
    finally:
        taps.remove()
        handle.remove()
        model.train(was_training)
    return (total / (len(data) * hw)).float(), torch.cat(inputs)


@torch.no_grad()
def pruned_accuracy(site: PruneSite, z: Tensor, labels: Tensor, pruned: Tensor) -> float:
    """Accuracy with `pruned` channels removed, from the cached inputs `z` of the linear layer (eval mode)."""
    lin = site.linear
    dev = lin.weight.device
    keep = site.column_mask(pruned).to(dev)
    site.tail.eval()
    logits = site.tail(F.linear(z.to(dev) * keep, lin.weight, lin.bias))
    return float((logits.argmax(1).cpu() == labels).float().mean())


def choose_pruned(site: PruneSite, order: Tensor, z: Tensor, labels: Tensor,
                  settings: FinePruningSettings) -> tuple[int, list[dict[str, float]]]:
    """How many of the least active channels to prune: `prune_ratio`, or BackdoorBench's tolerance rule."""
    if settings.prune_ratio is not None:
        n = round(settings.prune_ratio * site.channels)
        return n, [{"pruned": n, "clean_subset_acc": pruned_accuracy(site, z, labels, order[:n])}]
    step = math.ceil(site.channels * settings.once_prune_ratio)
    base = pruned_accuracy(site, z, labels, order[:0])
    log, chosen = [{"pruned": 0, "clean_subset_acc": base}], 0
    for n in range(step, site.channels, step):
        acc = pruned_accuracy(site, z, labels, order[:n])
        log.append({"pruned": n, "clean_subset_acc": acc})
        if base == 0 or (base - acc) / base >= settings.acc_ratio:
            break
        chosen = n
    return chosen, log


@DEFENSES.register("fine-pruning", title="Fine-Pruning")
class FinePruning(Defense):
    """Fine-Pruning: prune least-active last-layer channels, fine-tune (5% clean oracle)

    Prune the least active channels of the last feature map on clean data, then fine-tune on it."""

    Settings = FinePruningSettings
    settings: FinePruningSettings
    needs_backdoored_model = True
    needs_clean_data = True

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        clean = require_clean(ctx, "fine-pruning")
        s, model = self.settings, cast(nn.Module, ctx.backdoored)  # not None: require_clean checked
        site = find_prune_site(model, clean.get_batch(torch.zeros(1, dtype=torch.long))[0])
        activation, z = clean_statistics(model, site, clean)
        order = torch.argsort(activation, stable=True)  # least active first
        n, log = choose_pruned(site, order, z, clean.labels, s)
        mask = site.column_mask(order[:n]).to(site.linear.weight.device)
        prune.custom_from_mask(site.linear, "weight", mask.unsqueeze(0).expand_as(site.linear.weight).float())
        config = ctx.config(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, momentum=s.momentum,
                            weight_decay=s.weight_decay, schedule=s.schedule, augment=s.augment)
        history = ctx.trainer(model, "finetune", config).fit(clean, resume=ctx.resume)
        prune.remove(site.linear, "weight")  # permanent: zero columns in a plain weight
        layer = type(backbone_children(model, "fp")[site.index]).__name__
        info: dict[str, Any] = {"layer": f"backbone.{site.index} ({layer})",
                                "channels": site.channels, "pruned": n, "pruned_ratio": n / site.channels,
                                "pruned_channels": order[:n].tolist(), "steps": log}
        return DefenseResult(model, None, {"history": history, "metrics": {"fine_pruning": info}})
