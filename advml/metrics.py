"""Every metric in one place: accuracy, ASR, PSNR, l-inf, SSIM, detection precision/recall, and the one batched
evaluation loop they (and the defenses' per-sample scores) run through, `map_batches`."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from advml.data.base import ImageDataset, as_image_dataset
from advml.errors import InputError
from advml.utils.checks import check_images


@torch.no_grad()
def map_batches(model: nn.Module, data: ImageDataset, fn: Callable[[nn.Module, Tensor, Tensor], Tensor], *,
                batch_size: int = 512, device: torch.device | str | None = None) -> Tensor:
    """`fn(model, x, y)` for each batch of `data` (on the model's device, or `device`), concatenated on the CPU;
    an empty dataset gives an empty float tensor."""
    data = as_image_dataset(data)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        parts = []
        for idx in torch.arange(len(data)).split(batch_size):
            x, y = data.get_batch(idx)
            parts.append(fn(model, x.to(device, non_blocking=True), y.to(device)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0)


def predict(model: nn.Module, data: ImageDataset, *, batch_size: int = 512,
            device: torch.device | str | None = None) -> Tensor:
    """Predicted labels (N,) of `model` (switched to eval mode) on every image of `data`."""
    preds = map_batches(model, data, lambda m, x, _y: m(x).argmax(1), batch_size=batch_size, device=device)
    return preds if preds.numel() else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, data: ImageDataset, **kw: object) -> float:
    """Fraction of images whose predicted label equals their label."""
    data = as_image_dataset(data)
    if len(data) == 0:
        raise InputError("accuracy of an empty dataset is undefined")
    return float((predict(model, data, **kw) == data.labels).float().mean())  # type: ignore[arg-type]


def attack_success_rate(model: nn.Module, backdoor_test: ImageDataset, **kw: object) -> float:
    """ASR: fraction of triggered non-target test images classified as the attack's target label(s).

    `backdoor_test` is what `attack.backdoor_test_set(test)` returns: triggered images labelled with the
    attack's target, so ASR is the accuracy on it.
    """
    return accuracy(model, backdoor_test, **kw)


def psnr(clean: Tensor, poisoned: Tensor) -> Tensor:
    """Per-image PSNR in dB for [0,1] images (inf where an image is unchanged)."""
    check_images(clean, "clean"), check_images(poisoned, "poisoned")
    _same_shape(clean, poisoned)
    return peak_signal_noise_ratio(poisoned.double(), clean.double(), data_range=1.0, reduction="none",
                                   dim=(1, 2, 3)).float()


def linf(clean: Tensor, poisoned: Tensor) -> Tensor:
    """Per-image l-inf distance on the 0-255 scale."""
    _same_shape(clean, poisoned)
    return (poisoned.double() - clean.double()).abs().flatten(1).amax(1).mul(255).float()


def ssim(clean: Tensor, poisoned: Tensor) -> Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5), averaged over the whole reflect-padded map as
    torchmetrics does: the valid-only average of scikit-image would ignore a 5-pixel border, and with it
    every corner patch trigger on 32x32 images."""
    check_images(clean, "clean"), check_images(poisoned, "poisoned")
    _same_shape(clean, poisoned)
    if min(clean.shape[-2:]) < 11:
        raise InputError(f"SSIM needs images of at least 11x11, got {tuple(clean.shape[-2:])}")
    return cast(Tensor, structural_similarity_index_measure(poisoned.double(), clean.double(), data_range=1.0,
                                                            reduction="none")).float()  # no full image: a Tensor


def stealth(clean: Tensor, poisoned: Tensor) -> dict[str, float | None]:
    """Mean PSNR (dB, over changed images), mean l-inf (0-255) and mean SSIM (None below 11x11 images)."""
    if clean.shape[0] == 0:
        raise InputError("stealth metrics need at least one image")
    p = psnr(clean, poisoned)
    finite = p[torch.isfinite(p)]
    return {"psnr": float(finite.mean()) if finite.numel() else None,
            "linf": float(linf(clean, poisoned).mean()),
            "ssim": float(ssim(clean, poisoned).mean()) if min(clean.shape[-2:]) >= 11 else None}


def detection(predicted: Tensor, truth: Tensor) -> dict[str, float]:
    """Precision and recall of a poisoned-sample detector (bool flags, one per training sample)."""
    predicted, truth = predicted.bool(), truth.bool()
    if predicted.shape != truth.shape:
        raise InputError(f"flag shapes differ: {tuple(predicted.shape)} vs {tuple(truth.shape)}")
    tp = int((predicted & truth).sum())
    npred, ntrue = int(predicted.sum()), int(truth.sum())
    return {"detect_precision": tp / npred if npred else 0.0,
            "detect_recall": tp / ntrue if ntrue else 0.0}


def score_auroc(scores: Tensor, truth: Tensor) -> float:
    """How a detector's scores rank poisoned over clean samples: 0.5 chance, 1 perfect, below 0.5 inverted."""
    from torchmetrics.functional.classification import binary_auroc

    _same_shape(scores, truth)
    return float(binary_auroc(scores.double(), truth.long()))


def _same_shape(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise InputError(f"image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
