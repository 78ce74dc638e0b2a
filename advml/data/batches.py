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
