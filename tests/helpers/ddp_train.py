"""Run under torchrun (gloo, CPU): train a BatchNorm-free net with the one Trainer; rank 0 saves its weights."""

import sys

import torch
import torch.distributed as dist
from torch import nn

from advml.data.base import TensorImageDataset
from advml.train import TrainConfig, Trainer
from advml.utils.io import save_tensors


def data() -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (96,), generator=g)
    return TensorImageDataset(x, y, [str(i) for i in range(4)])


def net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4))


def train(out: str) -> None:
    model = net()
    config = TrainConfig(epochs=2, batch_size=16, lr=0.1, augment="standard", progress=False, device="cpu",
                         amp=False)  # float32: half batches per rank must sum to the full batch to 1e-5
    Trainer(model, config, seed=3).fit(data())
    rank = dist.get_rank() if dist.is_initialized() else 0
    save_tensors(f"{out}.rank{rank}.safetensors", model.state_dict())


if __name__ == "__main__":
    distributed = "--single" not in sys.argv
    if distributed:
        dist.init_process_group("gloo")
    train(sys.argv[1])
    if distributed:
        dist.destroy_process_group()
