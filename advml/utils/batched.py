"""The one batched evaluation loop: a function of (model, images, labels) over every batch of a dataset, with the
model in eval mode (its mode restored afterwards, also on error) and no gradients."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from advml.data.base import ImageDataset, as_image_dataset


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
