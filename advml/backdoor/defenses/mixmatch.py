"""MixMatch (Berthelot et al. 2019) as DBD's semi-supervised fine-tuning uses it: guess labels for unlabelled
images by averaging the predictions over K augmentations and sharpening them (temperature T), mix labelled and
unlabelled samples with mixup (lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha)), and train on
CE for the labelled part plus lambda_u (linearly ramped up) times an L2 loss for the unlabelled part."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from advml.config import Settings
from advml.data.base import ImageDataset
from advml.data.batches import standard_augment
from advml.errors import InputError
from advml.train import Batch
from advml.train.config import BatchSize, Epochs, LearningRate


class MixMatchSettings(Settings):
    """DBD's semi-supervised stage (BackdoorBench `config_z` / the DBD code): Adam 0.002, lambda_u 15, T 0.5,
    alpha 0.75, K 2, 1024 iterations of batch 64 per epoch (BackdoorBench 100 epochs, the original 190)."""

    epochs: Epochs = 100
    iterations: int = Field(1024, ge=1, description="steps per epoch (each a labelled and an unlabelled batch)")
    batch_size: BatchSize = 64
    lr: LearningRate = Field(0.002, description="Adam")
    lambda_u: float = Field(15.0, ge=0, description="weight of the unlabelled L2 loss, ramped up linearly")
    rampup_epochs: float | None = Field(None, gt=0, description="the ramp's length (the official rampup_length: "
                                        "190 in both configs); None: the MixMatch epochs")
    temperature: float = Field(0.5, gt=0, description="sharpening temperature T (a float; BackdoorBench parses int)")
    alpha: float = Field(0.75, gt=0, description="mixup Beta(alpha, alpha)")
    k: int = Field(2, ge=1, description="augmentations averaged for the unlabelled label guess")


def sharpen(p: Tensor, temperature: float) -> Tensor:
    """p^(1/T) renormalised over the classes (rows)."""
    q = p.pow(1.0 / temperature)
    return q / q.sum(dim=1, keepdim=True)


def mixup(x: Tensor, targets: Tensor, lam: float, perm: Tensor) -> tuple[Tensor, Tensor, float]:
    """MixMatch's mixup: lambda' = max(lam, 1 - lam), so each mixed sample stays closer to its own
    (first) input; returns (mixed x, mixed targets, lambda')."""
    lam = max(lam, 1.0 - lam)
    return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm], lam


def supervised_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against soft targets: -mean_i sum_c t_ic log softmax(logits)_ic."""
    return -(F.log_softmax(logits.float(), dim=1) * targets).sum(dim=1).mean()


def unsupervised_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """MixMatch's L2 term: mean over samples and classes of (softmax(logits) - targets)^2."""
    return (torch.softmax(logits.float(), dim=1) - targets).pow(2).mean()


def linear_rampup(progress: float, length: float) -> float:
    """The weight ramp of lambda_u: progress / length clipped to [0, 1] (progress in epochs)."""
    return 1.0 if length == 0 else float(min(max(progress / length, 0.0), 1.0))


def mixmatch_loss_fn(unlabelled: ImageDataset, num_classes: int, settings: MixMatchSettings,
                     progress: Callable[[], float], seed: int = 0,
                     augment: Callable[[Tensor], Tensor] | None = None) -> Callable[[nn.Module, Batch], Tensor]:
    """A Trainer loss_fn for one MixMatch step. The Trainer iterates a labelled view of `iterations x batch`
    positions (its seeded permutation per epoch, already crop+flip augmented); this loss draws the paired
    unlabelled batch itself as a pure function of those positions (position i -> unlabelled sample
    perm_u[i mod |U|], perm_u fixed), and takes every other random draw (K augmentations, Beta, the mixup
    permutation) from torch's global generator, which the Trainer checkpoints. So the one Trainer runs MixMatch
    unchanged, with its seeding and resume — no second data stream in the training loop.
    `progress()` returns the training progress in epochs (epoch + step / iterations) for the lambda_u ramp.
    `augment` (labelled batch and unlabelled views; torch's global generator): default the Trainer's crop + flip."""
    s = settings
    ramp = s.rampup_epochs if s.rampup_epochs is not None else s.epochs
    if len(unlabelled) == 0:
        raise InputError("MixMatch needs unlabelled samples")
    perm_u = torch.randperm(len(unlabelled), generator=torch.Generator().manual_seed(seed))

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        dev = batch.x.device
        n = batch.x.shape[0]
        u_idx = perm_u[batch.index % perm_u.numel()]
        u, _ = unlabelled.get_batch(u_idx)  # the labels of the unlabelled set are never read
        u = u.to(dev)
        views = [augment(u) if augment else standard_augment(u, torch.default_generator) for _ in range(s.k)]
        with torch.no_grad():
            p = cast(Tensor, sum(torch.softmax(model(v).float(), dim=1) for v in views)) / s.k
            guess = sharpen(p, s.temperature)
        x = torch.cat([augment(batch.x) if augment else batch.x, *views])
        targets = torch.cat([F.one_hot(batch.y, num_classes).float(), guess.repeat(s.k, 1)])
        lam = float(torch.distributions.Beta(s.alpha, s.alpha).sample())
        mixed_x, mixed_t, _ = mixup(x, targets, lam, torch.randperm(x.shape[0]).to(dev))
        logits = model(mixed_x)
        lx = supervised_loss(logits[:n], mixed_t[:n])
        lu = unsupervised_loss(logits[n:], mixed_t[n:])
        return lx + s.lambda_u * linear_rampup(progress(), ramp) * lu

    return loss
