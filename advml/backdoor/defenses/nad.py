"""NAD, Neural Attention Distillation (Li et al., ICLR 2021): fine-tune a copy of the backdoored model on the clean
subset (the teacher), then train the backdoored model (the student) on the same data with cross-entropy plus
beta_i * the attention-transfer loss between student and teacher feature maps at the last three stages.

Attention map (the official `at.py`, BackdoorBench `defense/nad.py`): sum over channels of |a|^p, divided by its
L2 norm over the positions (+1e-6) per sample; the loss is the mean squared difference of the two maps. Defaults
are BackdoorBench's cifar10 yaml and the official code: betas 500/1000/1000 (the paper's text quotes 5000),
p 2, teacher 10 epochs, student 20 epochs (the official `--epochs`), SGD lr 0.01, momentum 0.9, wd 1e-4. The
three maps are the outputs of the last three resolution stages (layer2-4 of ResNet-18; the official WRN-16-1 has
three groups); BackdoorBench's PreActResNet-18 code taps layer3, layer4 and the pooled 1x1 map instead."""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from advml.backdoor.defenses.base import DEFENSES, Defense, DefenseContext, DefenseResult, DefenseSettings
from advml.backdoor.defenses.layers import Taps, backbone_children, child_output_shapes, require_clean
from advml.data.base import ImageDataset
from advml.errors import ConfigError, InputError
from advml.train import Batch, LossFn
from advml.train.config import Augment, BatchSize, Epochs, LearningRate, Momentum, WeightDecay


class NADSettings(DefenseSettings):
    """BackdoorBench `config/defense/nad/cifar10.yaml` and the official NAD code."""

    clean_fraction: float = Field(0.05, gt=0, lt=1, description="clean subset: this share of the training set, "
                                                                "drawn from truly clean samples (an oracle)")
    teacher_epochs: Epochs = Field(10, description="fine-tuning of the teacher on the clean subset")
    epochs: Epochs = Field(20, description="student training with CE + attention distillation")
    betas: list[float] = Field(default_factory=lambda: [500.0, 1000.0, 1000.0],
                               description="AT weights of the last len(betas) stages, shallowest first")
    p: float = Field(2.0, gt=0, description="attention map: sum over channels of |a|^p")
    lr: LearningRate = 0.01
    batch_size: BatchSize = Field(64, description="the official code's 64")
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 1e-4
    augment: Augment = "standard"

    def model_post_init(self, _: Any) -> None:
        if not self.betas or any(b < 0 for b in self.betas):
            raise ConfigError("betas must be a non-empty list of non-negative weights")


def attention_map(fm: Tensor, p: float = 2.0, eps: float = 1e-6) -> Tensor:
    """(N, 1, H, W): sum over channels of |fm|^p, divided by its L2 norm over H, W (+eps), per sample."""
    am = fm.float().abs().pow(p).sum(1, keepdim=True)
    return am / (torch.linalg.vector_norm(am, dim=(2, 3), keepdim=True) + eps)


def at_loss(fm_s: Tensor, fm_t: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer: mean squared difference of the student's and teacher's attention maps."""
    if fm_s.shape[0] != fm_t.shape[0] or fm_s.shape[2:] != fm_t.shape[2:]:
        raise InputError(f"feature maps of shapes {tuple(fm_s.shape)} and {tuple(fm_t.shape)} do not match")
    return F.mse_loss(attention_map(fm_s, p), attention_map(fm_t, p))


def stage_outputs(model: nn.Module, x: Tensor, count: int) -> list[int]:
    """Backbone children ending the last `count` resolution stages: the last child of each spatial size > 1x1."""
    shapes = child_output_shapes(model, x[:1], "NAD")
    ends: dict[tuple[int, int], int] = {}
    for i, s in enumerate(shapes):
        if len(s) == 4 and s[2] * s[3] > 1:
            ends[s[2], s[3]] = i  # dicts keep first-insertion order: stages in depth order
    if len(ends) < count:
        raise ConfigError(f"NAD: {len(ends)} resolution stages in the backbone, {count} betas given")
    return list(ends.values())[-count:]


def nad_loss(teacher: nn.Module, student_taps: Taps, teacher_taps: Taps, betas: list[float], p: float) -> LossFn:
    """CE + sum_i beta_i * AT(student stage i, teacher stage i); the teacher is run without gradients."""

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        logits = model(batch.x)
        with torch.no_grad():
            teacher(batch.x)
        at = sum(b * at_loss(cast(Tensor, s), cast(Tensor, t).detach(), p)  # the taps hold this batch's outputs
                 for b, s, t in zip(betas, student_taps.outputs, teacher_taps.outputs))
        return F.cross_entropy(logits, batch.y) + at

    return loss


@DEFENSES.register("nad", title="NAD")
class NAD(Defense):
    """NAD: attention distillation from a clean-fine-tuned teacher (5% clean oracle)

    Distil a clean-fine-tuned teacher's attention maps into the backdoored model on the clean subset."""

    Settings = NADSettings
    settings: NADSettings
    needs_backdoored_model = True
    needs_clean_data = True

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        clean = require_clean(ctx, "NAD")
        s, student = self.settings, cast(nn.Module, ctx.backdoored)  # not None: require_clean checked
        layers = stage_outputs(student, clean.get_batch(torch.zeros(1, dtype=torch.long))[0], len(s.betas))
        base = {"batch_size": s.batch_size, "lr": s.lr, "momentum": s.momentum, "weight_decay": s.weight_decay,
                "schedule": "constant", "augment": s.augment}
        teacher = copy.deepcopy(student)
        teacher_history = ctx.trainer(teacher, "teacher", ctx.config(epochs=s.teacher_epochs, **base)).fit(
            clean, resume=ctx.resume)
        teacher.eval()
        for q in teacher.parameters():
            q.requires_grad_(False)
        s_taps = Taps([backbone_children(student, "NAD")[i] for i in layers])
        t_taps = Taps([backbone_children(teacher, "NAD")[i] for i in layers])
        try:
            history = ctx.trainer(student, "student", ctx.config(epochs=s.epochs, **base),
                                  loss_fn=nad_loss(teacher, s_taps, t_taps, s.betas, s.p), seed_offset=1).fit(
                clean, resume=ctx.resume)
        finally:
            s_taps.remove()
            t_taps.remove()
        return DefenseResult(student, None, {"history": history, "metrics": {"nad": {
            "layers": [f"backbone.{i}" for i in layers], "teacher_history": teacher_history}}})
