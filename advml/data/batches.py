"""The training data path: a dataset held as one tensor on the device, whole batches gathered and augmented there."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from advml.data.base import ImageDataset, TensorImageDataset


def resident(data: ImageDataset, device: torch.device, limit_bytes: int) -> ImageDataset:
    """`data` as one tensor on `device` (uint8 where that is lossless, else float32), when it fits in
    `limit_bytes`; else `data` itself. Indices keep their meaning (sample i stays sample i)."""
    if isinstance(data, TensorImageDataset) and data.images.device == device:
        return data
    c, h, w = data.image_shape
    if len(data) * c * h * w * 4 > limit_bytes:
        return data
    x, y = data.tensors()
    q = x.mul(255).round_()
    if torch.equal(q.div(255), x):
        x = q.to(torch.uint8)
    return TensorImageDataset(x.to(device), y.to(device), data.classes)


def index_device(data: ImageDataset) -> torch.device:
    """Where `data` wants its batch indices (a resident dataset: on its device)."""
    return data.images.device if isinstance(data, TensorImageDataset) else torch.device("cpu")


def standard_augment(x: Tensor, generator: torch.Generator, padding: int = 4, *, draws: int | None = None,
                     offset: int = 0, pad_mode: str = "zeros", flip: Tensor | None = None,
                     channels_last: bool = False) -> Tensor:
    """Per-image random crop with zero (or reflect) padding and random horizontal flip, for a whole batch at once.

    `draws`/`offset`: draw the parameters of a `draws`-image batch and use images offset.. of them (a DDP rank's
    share of the global batch, so every rank's generator stays in step). `flip`: which images to mirror, instead
    of a random half. `channels_last`: return the batch in that memory format (it comes out of the gather so)."""
    n, _, h, w = x.shape
    total = draws if draws is not None else n
    off = torch.randint(0, 2 * padding + 1, (2, total), generator=generator)[:, offset:offset + n].to(x.device)
    if flip is None:
        flip = (torch.rand(total, generator=generator) < 0.5)[offset:offset + n]
    flip = flip.to(x.device)
    xp = F.pad(x, (padding,) * 4, mode="reflect" if pad_mode == "reflect" else "constant")
    rows = off[0, :, None] + torch.arange(h, device=x.device)
    cols = off[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = xp[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()


def random_rotate(x: Tensor, degrees: float, generator: torch.Generator, *, draws: int | None = None,
                  offset: int = 0) -> Tensor:
    """Per-image rotation by a uniform angle in [-degrees, degrees] about the centre, nearest sampling and zero fill
    (torchvision's RandomRotation defaults), for a whole batch at once; `draws`/`offset` as `standard_augment`."""
    n = x.shape[0]
    total = draws if draws is not None else n
    angle = ((torch.rand(total, generator=generator) * 2 - 1) * degrees)[offset:offset + n]
    theta = torch.deg2rad(angle).to(x.device, torch.float32)
    cos, sin, zero = theta.cos(), theta.sin(), torch.zeros_like(theta)
    # affine_grid maps output to input coordinates; with square images normalised coordinates keep angles
    h, w = x.shape[-2:]
    matrix = torch.stack([torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1)
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).to(x.dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


class BatchView(torch.utils.data.Dataset):
    """Lets a DataLoader fetch whole batches (one list of indices per item) from an ImageDataset."""

    def __init__(self, data: ImageDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        x, y = self.data.get_batch(index)
        return x, y, index
