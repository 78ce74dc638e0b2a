"""Contrastive learning, written once for every defense that needs it: SS-CTL (D-ST), SimCLR and SupCon
(the baselines, DBD's pre-training). One loss, one augmentation, one encoder trainer, one linear probe."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import kornia.augmentation as K
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from advml.config import Settings
from advml.data.base import ImageDataset
from advml.errors import InputError
from advml.train import Batch, TrainConfig, Trainer
from advml.train.config import BatchSize, Epochs, LearningRate, WeightDecay
from advml.utils.precision import AmpSetting, at_least_float32

if TYPE_CHECKING:
    from advml.models.wrapper import ImageClassifier


def contrastive_loss(z1: Tensor, z2: Tensor, labels: Tensor | None = None, supervised: Tensor | None = None, *,
                     temperature: float = 0.1, base_temperature: float = 0.07,
                     anchors: Literal["both", "first"] = "both") -> Tensor:
    """SupCon loss (Khosla et al.) over two views, with per-anchor supervision.

    An anchor i whose `supervised[i]` is True takes every same-label sample (both views) as positives; any
    other anchor takes only its own other view (SimCLR). labels=None or supervised all False -> SimCLR;
    supervised all True -> SupCon; supervised = "in D_c" -> D-ST's SS-CTL, whose mask zeroes the rows of
    non-clean anchors only (a clean anchor still counts same-label non-clean samples as positives).
    anchors: "both" views anchor (SupContrast's contrast_mode 'all'); "first": only the first view's samples,
    each against all 2N - 1 others (DBD's SimCLRLoss). z1, z2: (N, d) embeddings of the views (normalised here)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise InputError(f"views must be (N, d) of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    with torch.autocast(z1.device.type, enabled=False):  # similarities / temperature need float32, not bf16
        return _contrastive(at_least_float32(z1), at_least_float32(z2), labels, supervised, temperature,
                            base_temperature, anchors)


def _contrastive(z1: Tensor, z2: Tensor, labels: Tensor | None, supervised: Tensor | None, temperature: float,
                 base_temperature: float, anchors: str) -> Tensor:
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    pair = torch.arange(2 * n, device=z.device).roll(n)  # i <-> i+N: the other view
    pos = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=z.device)
    pos[torch.arange(2 * n, device=z.device), pair] = True
    if labels is not None:
        sup = torch.ones(n, dtype=torch.bool, device=z.device) if supervised is None else supervised.to(z.device)
        lab = labels.to(z.device).repeat(2)
        same = (lab[:, None] == lab[None, :]) & ~self_mask
        pos |= same & sup.repeat(2)[:, None]
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    mean_pos = log_prob.masked_fill(~pos, 0).sum(1) / pos.sum(1)
    if anchors == "first":
        mean_pos = mean_pos[:n]
    return -(temperature / base_temperature) * mean_pos.mean()


def two_view_augment(image_size: tuple[int, int], blur_p: float = 0.0) -> nn.Sequential:
    """SupContrast / SimCLR's CIFAR views: RandomResizedCrop(0.2-1), flip, ColorJitter(0.4,0.4,0.4,0.1) p 0.8,
    grayscale p 0.2 — per-image random parameters, whole batch at once. blur_p > 0 adds DBD's Gaussian blur
    (kernel 3, sigma 0.1-2) with that probability."""
    ops = [K.RandomResizedCrop(image_size, scale=(0.2, 1.0)), K.RandomHorizontalFlip(),
           K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2)]
    if blur_p > 0:
        ops.append(K.RandomGaussianBlur((3, 3), (0.1, 2.0), p=blur_p))
    return nn.Sequential(*ops)


def crop_flip_augment(image_size: tuple[int, int], padding: int = 4) -> nn.Sequential:
    """DBD's `train` transform: RandomCrop(size, padding 4, reflect) + horizontal flip, per image (kornia)."""
    return nn.Sequential(K.RandomCrop(cast(tuple[int, int], tuple(image_size)), padding=padding,
                                      padding_mode="reflect"),
                         K.RandomHorizontalFlip())


class ContrastiveSettings(Settings):
    """Encoder training (SupContrast defaults as D-ST uses them; `epochs` 200 at paper scale)."""

    model: str | None = Field(None, description="architecture of the encoder (a registry name); None: the run's")
    epochs: Epochs = 200
    batch_size: int = Field(512, ge=2)
    lr: LearningRate = 0.5
    weight_decay: WeightDecay = 1e-4
    warmup_epochs: int = Field(10, ge=0, description="linear warm-up (the official code: when batch > 256)")
    temperature: float = Field(0.1, gt=0)
    base_temperature: float = Field(0.07, gt=0, description="the loss is scaled by temperature / base_temperature "
                                    "(SupContrast); = temperature for plain SimCLR / NT-Xent (DBD)")
    projection_dim: int = Field(128, ge=1)
    projection_bn: bool = Field(False, description="BatchNorm1d after the projection's hidden layer (DBD's "
                                "SelfModel); SupContrast's head has none")
    anchor_views: Literal["both", "first"] = Field("both", description="which view's samples anchor the loss: "
                                                   "both (SupContrast), first (DBD's SimCLRLoss)")
    blur_p: float = Field(0.0, ge=0, le=1, description="probability of a Gaussian blur view (DBD: 0.5)")

    def model_post_init(self, _: Any) -> None:
        if self.model is not None:
            from advml.models import MODELS

            MODELS.get(self.model)  # an unknown name fails here, with the closest registered name


class ProbeSettings(Settings):
    """The linear classifier on the frozen encoder (D-ST's MCE stage, the baselines' linear head)."""

    epochs: Epochs = 10
    batch_size: BatchSize = 512
    lr: LearningRate = 5.0
    weight_decay: WeightDecay = 0.0
    optimizer: Literal["sgd", "adam"] = "sgd"
    # constant: the official MCE command (no --cosine; SupContrast's steps at 60/75/90 are past its 10 epochs),
    # and DBD's warm-up (lr_scheduler: null)
    schedule: Literal["constant", "cosine"] = "constant"
    augment: Literal["simclr", "crop_flip"] = Field("simclr", description="simclr: SupContrast's single view "
                                                    "(D-ST's MCE); crop_flip: reflect crop + flip (DBD's warm-up)")
    train_bn: bool = Field(False, description="the frozen encoder's BatchNorm in train mode, its statistics "
                           "moving (DBD's warm-up calls model.train()); False: eval mode (SupContrast)")


class ContrastiveModel(nn.Module):
    """A classifier's feature extractor plus an MLP projection head (SupConResNet)."""

    def __init__(self, classifier: nn.Module, projection_dim: int = 128, batch_norm: bool = False) -> None:
        super().__init__()
        self.classifier = cast("ImageClassifier", classifier)  # its interface: feature_dim, features, head
        d = cast(int, classifier.feature_dim)
        hidden = [nn.Linear(d, d), *([nn.BatchNorm1d(d)] if batch_norm else []), nn.ReLU(inplace=True)]
        dtype = next(classifier.parameters()).dtype  # the classifier's precision (float64 in the reference tests)
        self.projection = nn.Sequential(*hidden, nn.Linear(d, projection_dim)).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.classifier.features(x))


def train_encoder(classifier: nn.Module, data: ImageDataset, settings: ContrastiveSettings, *,
                  supervised: Tensor | None, use_labels: bool, seed: int = 0, device: str = "auto",
                  amp: AmpSetting = "auto", progress: bool = True, checkpoint_dir: str | Path | None = None,
                  resume: bool = False) -> nn.Module:
    """Train `classifier`'s feature extractor contrastively on two views of `data` (in place).

    supervised: bool per sample of `data` (which anchors use label positives), None = all of them;
    use_labels=False ignores labels entirely (SimCLR)."""
    s = settings
    net = ContrastiveModel(classifier, s.projection_dim, s.projection_bn)
    augment = two_view_augment(data.image_shape[1:], s.blur_p)
    sup = None if supervised is None else supervised.bool().cpu()
    if sup is not None and sup.numel() != len(data):
        raise InputError(f"supervised has {sup.numel()} flags for {len(data)} samples")

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        z = model(torch.cat([augment(batch.x), augment(batch.x)]))
        z1, z2 = z.chunk(2)
        if not use_labels:
            return contrastive_loss(z1, z2, temperature=s.temperature, base_temperature=s.base_temperature,
                                    anchors=s.anchor_views)
        return contrastive_loss(z1, z2, batch.y, None if sup is None else sup[batch.index],
                                temperature=s.temperature, base_temperature=s.base_temperature,
                                anchors=s.anchor_views)

    config = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay,
                         warmup_epochs=min(s.warmup_epochs, s.epochs - 1), augment="none", device=device,
                         amp=amp, progress=progress)
    Trainer(net, config, loss_fn=loss, seed=seed, checkpoint_dir=checkpoint_dir).fit(data, resume=resume)
    return classifier


class LinearProbe(nn.Module):
    """A classifier whose feature extractor is frozen (no gradients; eval mode unless `train_bn`): only `head`
    trains."""

    def __init__(self, classifier: nn.Module, train_bn: bool = False) -> None:
        super().__init__()
        self.classifier, self.train_bn = cast("ImageClassifier", classifier), train_bn  # features, head
        for p in classifier.parameters():
            p.requires_grad_(False)
        for p in cast(nn.Module, classifier.head).parameters():
            p.requires_grad_(True)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        if not self.train_bn:
            self.classifier.eval()  # BatchNorm statistics of the frozen encoder must not move
        self.classifier.head.train(mode)
        return self

    def features(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.classifier.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.head(self.features(x))


def train_probe(classifier: nn.Module, data: ImageDataset, settings: ProbeSettings,
                loss_fn: Callable[[nn.Module, Batch], Tensor], *, evals: dict[str, ImageDataset] | None = None,
                select: Callable[[dict], float] | None = None, seed: int = 0, device: str = "auto",
                amp: AmpSetting = "auto", progress: bool = True, checkpoint_dir: str | Path | None = None,
                resume: bool = False) -> list[dict[str, Any]]:
    """Train a fresh linear head of `classifier` (in place) on its frozen encoder with single-view augmentation;
    returns the per-epoch history."""
    s = settings
    cast(nn.Linear, classifier.head).reset_parameters()
    probe = LinearProbe(classifier, s.train_bn)
    augment = crop_flip_augment(data.image_shape[1:]) if s.augment == "crop_flip" else \
        nn.Sequential(*list(two_view_augment(data.image_shape[1:])))

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        return loss_fn(model, Batch(augment(batch.x), batch.y, batch.index))

    config = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay,
                         optimizer=s.optimizer, schedule=s.schedule, augment="none", device=device, amp=amp,
                         progress=progress)
    history = Trainer(probe, config, loss_fn=loss, params=cast(nn.Module, classifier.head).parameters(), seed=seed,
                      checkpoint_dir=checkpoint_dir).fit(data, evals, resume=resume, select=select)
    for p in classifier.parameters():
        p.requires_grad_(True)
    return history
