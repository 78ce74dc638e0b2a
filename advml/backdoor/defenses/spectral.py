"""Spectral Signatures (Tran et al., NeurIPS 2018): per (given) label, centre the backdoored model's penultimate
features, score each sample by its squared projection on the top right singular vector, remove the
removal_factor * eps highest-scoring samples of the class, and retrain a fresh model on the rest.

BackdoorBench (`defense/spectral.py`, `config/defense/spectral/cifar10.yaml`) removes the scores above the 85th
percentile (= 1.5 x its poison rate 0.1) and projects the uncentred features; we centre them as the paper does
(the paper's outlier score), and remove exactly round(removal_factor * eps * n_c) samples per class."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from advml.backdoor.defenses.base import DEFENSES, Defense, DefenseContext, DefenseResult, DefenseSettings
from advml.backdoor.defenses.filtering import penultimate_features, retrain, split_from_removed
from advml.data.base import ImageDataset
from advml.errors import ConfigError, InputError
from advml.train import TrainConfig


class SpectralSettings(DefenseSettings):
    """The paper's and BackdoorBench's removal: 1.5 x the expected poison rate of every class."""

    eps: float = Field(0.1, gt=0, lt=1, description="expected poison rate (BackdoorBench: the attack's rate, 0.1)")
    removal_factor: float = Field(1.5, gt=0, description="remove the top removal_factor * eps of each class")
    train: TrainConfig | None = Field(None, description="training of the fresh model on the kept samples; "
                                                        "None: the run's training settings")

    def model_post_init(self, _: object) -> None:
        if self.removal_factor * self.eps >= 1:
            raise ConfigError("removal_factor * eps must be below 1 (it is the share of each class removed)")


def spectral_scores(features: Tensor, labels: Tensor) -> Tensor:
    """Per label: (<f_i - mean, v>)^2 with v the top right singular vector of the centred features (float64)."""
    if features.shape[0] != labels.numel():
        raise InputError(f"{features.shape[0]} feature rows for {labels.numel()} labels")
    f = features.double()
    scores = torch.zeros(labels.numel(), dtype=torch.float64)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        centred = f[idx] - f[idx].mean(0, keepdim=True)
        v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        scores[idx] = (centred @ v).pow(2)
    return scores


def spectral_removed(scores: Tensor, labels: Tensor, fraction: float) -> Tensor:
    """Bool per sample: among the round(fraction * n_c) highest scores of its label."""
    removed = torch.zeros(labels.numel(), dtype=torch.bool)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        k = round(fraction * idx.numel())
        removed[idx[torch.argsort(scores[idx], descending=True, stable=True)[:k]]] = True
    return removed


@DEFENSES.register("spectral", title="Spectral Signatures")
class SpectralSignatures(Defense):
    """Spectral Signatures: drop each class's top 1.5 x eps spectral outliers, retrain

    Remove each class's top spectral-signature outliers of the backdoored model, retrain on the rest."""

    Settings = SpectralSettings
    settings: SpectralSettings
    needs_backdoored_model = True

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        if ctx.backdoored is None:
            raise ConfigError("Spectral Signatures reads a trained model's features; none was given")
        s = self.settings
        labels = train.labels
        scores = spectral_scores(penultimate_features(ctx.backdoored, train), labels)
        split = split_from_removed(spectral_removed(scores, labels, s.removal_factor * s.eps), scores)
        model, history = retrain(train, split.clean, ctx, s.train)
        return DefenseResult(model, split, {"history": history, "score_name": "spectral signature score"})
