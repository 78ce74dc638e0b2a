"""FCT (feature consistency towards transformations, Chen et al. 2022): poisoned samples' penultimate
features move much more under rotation/translation than clean samples'. Batched, seeded."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from advml.data.base import ImageDataset, as_image_dataset
from advml.errors import ConfigError, InputError
from advml.registry import Registry
from advml.utils.checks import check_images

# The official code's torchvision transforms (nearest-neighbour resampling, zero fill), as kornia batch ops
TRANSFORMS: Registry[Callable[[tuple[int, int]], nn.Module]] = Registry("FCT transform")  # each: (H, W) -> op


@TRANSFORMS.register("rotate")
def rotate(hw: tuple[int, int]) -> nn.Module:
    """random rotation in [-180, 180] degrees (the official tau, first half)"""
    return K.RandomRotation(180.0, resample="nearest", p=1.0)


@TRANSFORMS.register("translate")
def translate(hw: tuple[int, int]) -> nn.Module:
    """random translation up to 20% of width/height (the official tau, second half)"""
    return K.RandomAffine(0.0, translate=(0.2, 0.2), resample="nearest", p=1.0)


@TRANSFORMS.register("scale")
def scale(hw: tuple[int, int]) -> nn.Module:
    """random scaling in [0.8, 1.2]"""
    return K.RandomAffine(0.0, scale=(0.8, 1.2), resample="nearest", p=1.0)


@TRANSFORMS.register("flip")
def flip(hw: tuple[int, int]) -> nn.Module:
    """horizontal flip"""
    return K.RandomHorizontalFlip(p=1.0)


@TRANSFORMS.register("crop")
def crop(hw: tuple[int, int]) -> nn.Module:
    """random crop after zero padding of 4"""
    return K.RandomCrop(hw, padding=4, p=1.0)


@TRANSFORMS.register("blur")
def blur(hw: tuple[int, int]) -> nn.Module:
    """Gaussian blur, kernel 15, sigma 0.1-2"""
    return K.RandomGaussianBlur(15, (0.1, 2.0), p=1.0)


@TRANSFORMS.register("erase")
def erase(hw: tuple[int, int]) -> nn.Module:
    """random erasing (area 2-33%)"""
    return K.RandomErasing(p=1.0)


DEFAULT_TRANSFORMS = ("rotate", "translate")


def build_transform(names: Sequence[str], image_size: tuple[int, int]) -> nn.Sequential:
    """The composed random transform tau, applied per image with independent parameters."""
    if not names:
        raise ConfigError("FCT needs at least one transform")
    return nn.Sequential(*(TRANSFORMS.get(n)(image_size) for n in names))


def fct_batch(model: nn.Module, x: Tensor, transform: nn.Module, *, normalize: bool = False,
              draws: int = 1) -> Tensor:
    """FCT score of each image of one batch: mean over feature dims of (f(x) - f(tau(x)))^2, averaged over
    `draws` random tau.

    1 + draws forward passes of N images through `model.features` in eval mode: f(x) is computed once (one
    pass of a concatenated 2N batch is 2x slower on CPU). With `normalize`, features are L2-normalised first."""
    check_images(x, "images")
    f = model.features(x)  # type: ignore[operator]  # nn.Module.__getattr__: the model's features()
    f = F.normalize(f, dim=1) if normalize else f
    total = torch.zeros(x.shape[0], device=f.device, dtype=f.dtype)
    for _ in range(draws):
        ft = model.features(transform(x))  # type: ignore[operator]
        ft = F.normalize(ft, dim=1) if normalize else ft
        total += (f - ft).pow(2).mean(dim=1)
    return total / draws


@torch.no_grad()
def fct_scores(model: nn.Module, data: ImageDataset, *, transforms: Sequence[str] = DEFAULT_TRANSFORMS,
               draws: int = 1, normalize: bool = False, seed: int = 0, batch_size: int = 512,
               device: torch.device | str | None = None) -> Tensor:
    """FCT score of every sample of `data` (float, on CPU), averaged over `draws` random transforms.

    Seeded: the same (model, data, settings, seed) give the same scores. `model` needs `features(x)`."""
    if not hasattr(model, "features"):
        raise InputError("FCT needs a model with a features(x) method (penultimate features)")
    if draws < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}")
    data = as_image_dataset(data)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    transform = build_transform(transforms, data.image_shape[1:])
    was_training = model.training
    model.eval()
    out = torch.zeros(len(data))
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(data), batch_size):
                index = torch.arange(start, min(start + batch_size, len(data)))
                x = data.get_batch(index)[0].to(device)
                out[index] = fct_batch(model, x, transform, normalize=normalize, draws=draws).float().cpu()
    finally:
        model.train(was_training)
    return out
