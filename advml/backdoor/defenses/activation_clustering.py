"""Activation Clustering (Chen et al. 2018): per (given) label, reduce the backdoored model's penultimate
activations to 10 dimensions, split them into 2 clusters with k-means, flag a cluster as poisoned by its
relative size, remove the flagged samples and retrain a fresh model on the rest.

Reduction is PCA (scikit-learn is no dependency, so no FastICA; ART's ActivationDefence offers both, BackdoorBench
uses ICA). The analysis defaults to relative size below 0.35 (ART's `relative-size`, its default threshold);
BackdoorBench's cifar10 yaml sets `smaller`, which removes the smaller cluster of every class, clean or not."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from advml.backdoor.defenses.base import DEFENSES, Defense, DefenseContext, DefenseResult, DefenseSettings
from advml.backdoor.defenses.filtering import penultimate_features, retrain, split_from_removed
from advml.data.base import ImageDataset
from advml.errors import ConfigError, InputError
from advml.train import TrainConfig


class ACSettings(DefenseSettings):
    """BackdoorBench's nb_dims 10 and nb_clusters 2; ART's relative-size analysis with threshold 0.35."""

    nb_dims: int = Field(10, ge=1, description="PCA dimensions of the activations")
    nb_clusters: int = Field(2, ge=2)
    analysis: Literal["relative-size", "smaller"] = Field(
        "relative-size", description="relative-size: clusters below size_threshold of their class are poisoned; "
                                     "smaller: the smallest cluster of every class is")
    size_threshold: float = Field(0.35, gt=0, lt=1)
    n_init: int = Field(10, ge=1, description="k-means restarts (k-means++ seeding), the lowest inertia wins")
    max_iter: int = Field(300, ge=1)
    train: TrainConfig | None = Field(None, description="training of the fresh model on the kept samples; "
                                                        "None: the run's training settings")


def pca_reduce(x: Tensor, dims: int) -> Tensor:
    """Project the centred rows of `x` on their top `dims` principal directions (exact SVD)."""
    centred = x - x.mean(0, keepdim=True)
    vh = torch.linalg.svd(centred, full_matrices=False).Vh
    return centred @ vh[:min(dims, vh.shape[0])].T


def kmeans(x: Tensor, k: int, *, n_init: int = 10, max_iter: int = 300,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding, all `n_init` restarts at once; (assignment (N,), centroids (k, D))
    of the restart with the lowest inertia."""
    n, d = x.shape
    if n < k:
        raise InputError(f"k-means with k={k} needs at least {k} points, got {n}")
    g = generator or torch.Generator().manual_seed(0)
    centres = torch.empty(n_init, k, d, dtype=x.dtype)
    centres[:, 0] = x[torch.randint(0, n, (n_init,), generator=g)]
    for j in range(1, k):
        d2 = torch.cdist(x.expand(n_init, n, d), centres[:, :j]).pow(2).amin(2)  # (R, N)
        pick = torch.multinomial(d2 + 1e-12, 1, generator=g).squeeze(1)
        centres[:, j] = x[pick]
    for _ in range(max_iter):
        assign = torch.cdist(x.expand(n_init, n, d), centres).argmin(2)  # (R, N)
        onehot = torch.nn.functional.one_hot(assign, k).to(x.dtype)  # (R, N, k)
        counts = onehot.sum(1).unsqueeze(2)  # (R, k, 1)
        new = torch.where(counts > 0, onehot.transpose(1, 2) @ x / counts.clamp_min(1), centres)
        done = torch.allclose(new, centres)
        centres = new
        if done:
            break
    dist = torch.cdist(x.expand(n_init, n, d), centres).pow(2)
    assign = dist.argmin(2)
    best = dist.gather(2, assign.unsqueeze(2)).squeeze(2).sum(1).argmin()
    return assign[best], centres[best]


def activation_clustering(features: Tensor, labels: Tensor, settings: ACSettings, *,
                          seed: int = 0) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """(removed flags, scores = 1 - relative size of the sample's cluster, per-class cluster sizes)."""
    if features.shape[0] != labels.numel():
        raise InputError(f"{features.shape[0]} feature rows for {labels.numel()} labels")
    s = settings
    g = torch.Generator().manual_seed(seed)
    removed = torch.zeros(labels.numel(), dtype=torch.bool)
    scores = torch.zeros(labels.numel(), dtype=torch.float64)
    report = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        if idx.numel() < s.nb_clusters:
            continue
        assign, _ = kmeans(pca_reduce(features[idx].double(), s.nb_dims), s.nb_clusters, n_init=s.n_init,
                           max_iter=s.max_iter, generator=g)
        rel = torch.bincount(assign, minlength=s.nb_clusters).double() / idx.numel()
        poisoned = rel < s.size_threshold if s.analysis == "relative-size" \
            else torch.arange(s.nb_clusters) == rel.argmin()
        removed[idx] = poisoned[assign]
        scores[idx] = 1 - rel[assign]
        report.append({"label": int(c), "cluster_sizes": rel.tolist(),
                       "poisoned": poisoned.nonzero().flatten().tolist()})
    return removed, scores, report


@DEFENSES.register("ac", title="Activation Clustering")
class ActivationClustering(Defense):
    """Activation Clustering: PCA-10 + 2-means per class, drop clusters < 0.35, retrain

    Remove the small k-means clusters of each class's backdoored-model activations, retrain on the rest."""

    Settings = ACSettings
    settings: ACSettings
    needs_backdoored_model = True

    def run(self, train: ImageDataset, ctx: DefenseContext) -> DefenseResult:
        if ctx.backdoored is None:
            raise ConfigError("Activation Clustering reads a trained model's activations; none was given")
        s = self.settings
        removed, scores, clusters = activation_clustering(penultimate_features(ctx.backdoored, train), train.labels,
                                                          s, seed=ctx.seed)
        split = split_from_removed(removed, scores)
        model, history = retrain(train, split.clean, ctx, s.train)
        return DefenseResult(model, split, {"history": history, "score_name": "AC score (1 - relative cluster size)",
                                            "metrics": {"ac_clusters": clusters}})
