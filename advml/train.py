"""The one training loop: SGD/Adam, cosine schedule, batched augmentation, per-epoch evaluation,
atomic checkpoints and resume. Defenses plug in their own loss through `loss_fn`."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from advml import provenance
from advml.config import Settings
from advml.data.base import ImageDataset, as_image_dataset
from advml.errors import ConfigError, DataError, NumericalError
from advml.metrics import accuracy
from advml.utils.checks import check_state
from advml.utils.io import load_tensors, save_tensors
from advml.utils.runtime import resolve_device

CHECKPOINT_NAME = "last.safetensors"
BEST_NAME = "best.safetensors"


class TrainConfig(Settings):
    """Training settings; defaults are BackdoorBench's CIFAR ones (SGD 0.01, momentum 0.9, wd 5e-4, cosine)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.01, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=list, description="epochs where multistep multiplies lr by gamma")
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up epochs before the schedule")
    augment: Literal["standard", "none"] = Field("standard", description="random crop (pad 4) + horizontal flip")
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored elsewhere)")
    device: str = "auto"
    eval_batch_size: int = Field(512, ge=1)
    num_workers: int = Field(0, ge=0, description="loader processes for file-backed datasets")
    progress: bool = True


class Batch(NamedTuple):
    """What a loss function sees: (augmented) images, labels and the samples' dataset indices."""

    x: Tensor
    y: Tensor
    index: Tensor


LossFn = Callable[[nn.Module, Batch], Tensor]
Phase = tuple[ImageDataset, LossFn]  # one pass over a dataset with its own loss, within an epoch


def model_state(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The model weights among a checkpoint's tensors (keys `model.*`; optimiser and RNG state left out)."""
    return {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}


def cross_entropy(model: nn.Module, batch: Batch) -> Tensor:
    """The default loss: cross-entropy of the model's logits."""
    return F.cross_entropy(model(batch.x), batch.y)


def standard_augment(x: Tensor, generator: torch.Generator, padding: int = 4, *, draws: int | None = None,
                     offset: int = 0) -> Tensor:
    """Per-image random crop with zero padding and random horizontal flip, for a whole batch at once.

    `draws`/`offset`: draw the parameters of a `draws`-image batch and use images offset.. of them (a DDP rank's
    share of the global batch, so every rank's generator stays in step)."""
    n, _, h, w = x.shape
    total = draws if draws is not None else n
    off = torch.randint(0, 2 * padding + 1, (2, total), generator=generator)[:, offset:offset + n].to(x.device)
    flip = (torch.rand(total, generator=generator) < 0.5)[offset:offset + n].to(x.device)
    xp = F.pad(x, (padding,) * 4)
    rows = off[0, :, None] + torch.arange(h, device=x.device)
    cols = off[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = xp[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class _BatchView(torch.utils.data.Dataset):
    """Lets a DataLoader fetch whole batches (one list of indices per item) from an ImageDataset."""

    def __init__(self, data: ImageDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        x, y = self.data.get_batch(index)
        return x, y, index


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Trainer:
    """Trains `model` on an ImageDataset; `fit` evaluates accuracy on named sets after every epoch."""

    def __init__(self, model: nn.Module, config: TrainConfig | None = None, *, loss_fn: LossFn = cross_entropy,
                 params: Iterable[nn.Parameter] | None = None, seed: int = 0,
                 checkpoint_dir: str | os.PathLike[str] | None = None) -> None:
        self.config = config or TrainConfig()
        self.device = resolve_device(self.config.device)
        if self.device.type == "cuda" and _distributed():  # torchrun: one GPU per process
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.seed = seed
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        c = self.config
        if c.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                                                                    weight_decay=c.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        # torchrun / torch.distributed: every rank takes its contiguous share of each global batch, DDP averages
        # the gradients, rank 0 alone writes checkpoints
        self.world, self.rank = (dist.get_world_size(), dist.get_rank()) if _distributed() else (1, 0)
        self.net: nn.Module = self.model
        if self.world > 1:
            if self.config.batch_size % self.world:
                raise ConfigError(f"batch_size {self.config.batch_size} must be a multiple of the {self.world} "
                                  "distributed processes")
            if loss_fn is not cross_entropy:
                raise ConfigError("distributed training runs the plain cross-entropy loss only (custom losses "
                                  "may call sub-modules that DDP does not synchronise)")
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []

    # --- schedule -------------------------------------------------------------------------------------
    def lr_at(self, epoch: int) -> float:
        """Learning rate during epoch `epoch` (0-based): warm-up, then cosine / multistep / constant."""
        c = self.config
        if epoch < c.warmup_epochs:
            return c.lr * (epoch + 1) / (c.warmup_epochs + 1)
        if c.schedule == "cosine":
            span = max(c.epochs - c.warmup_epochs, 1)
            return c.lr * 0.5 * (1 + math.cos(math.pi * (epoch - c.warmup_epochs) / span))
        if c.schedule == "multistep":
            return c.lr * c.gamma ** sum(epoch >= m for m in c.milestones)
        return c.lr

    # --- checkpoints ----------------------------------------------------------------------------------
    def _config_key(self) -> str:
        return json.dumps(provenance.train_key(self.config.model_dump()), sort_keys=True)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write model, optimizer, RNG and progress to one safetensors file, atomically."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        scalars: dict[str, Any] = {}
        for pid, state in opt["state"].items():
            for key, val in state.items():
                if isinstance(val, Tensor):
                    tensors[f"optim.{pid}.{key}"] = val
                else:
                    scalars[f"{pid}.{key}"] = val
        tensors["rng.data"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"epoch": str(self.epoch), "history": json.dumps(self.history), "config": self._config_key(),
                "seed": str(self.seed), "param_groups": json.dumps(opt["param_groups"]),
                "optim_scalars": json.dumps(scalars), **provenance.stamp(path)}  # the run's fingerprint
        save_tensors(path, tensors, meta)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore everything `save_checkpoint` wrote; the training settings must be the same, and every tensor and
        record is checked (keys, shapes, finite values, RNG states, history) before any of it is loaded."""
        tensors, meta = load_tensors(path)
        provenance.check(path, meta)  # written by this run (data, attack, model, defense...), or refused
        if meta.get("config") != self._config_key() or meta.get("seed") != str(self.seed):
            raise ConfigError(f"{path}: checkpoint was written with other training settings or seed; "
                              "resume with the same settings or use another output folder")
        state, scalars, groups, epoch, history = self._checked(path, tensors, meta)
        self.model.load_state_dict(model_state(tensors))
        for k, v in scalars.items():
            pid, key = k.split(".", 1)
            state.setdefault(int(pid), {})[key] = v
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self.generator.set_state(tensors["rng.data"])
        torch.set_rng_state(tensors["rng.torch"])
        self.epoch, self.history = epoch, history

    def _checked(self, path: str | os.PathLike[str], tensors: dict[str, Tensor],
                 meta: Mapping[str, str]) -> tuple[dict[int, dict[str, Any]], dict[str, Any], list, int, list]:
        """The optimiser state, scalars, param groups, epoch and history of a checkpoint, each checked."""
        check_state(model_state(tensors), self.model.state_dict(), str(path))
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                i = int(pid) if pid.isdigit() else -1
                expected = () if key == "step" else tuple(params[i].shape) if 0 <= i < len(params) else None
                if expected is None or tuple(v.shape) != expected or (v.is_floating_point() and
                                                                      not bool(torch.isfinite(v).all())):
                    raise DataError(f"{path}: damaged checkpoint, optimiser state {k!r} does not fit the model")
                state.setdefault(i, {})[key] = v.to(self.device)
        for name, live in (("rng.data", self.generator.get_state()), ("rng.torch", torch.get_rng_state())):
            t = tensors.get(name)
            if t is None or t.dtype != live.dtype or t.shape != live.shape:
                raise DataError(f"{path}: damaged checkpoint, {name} is not a random generator state")
        try:
            epoch, history = int(meta["epoch"]), json.loads(meta["history"])
            scalars, groups = json.loads(meta["optim_scalars"]), json.loads(meta["param_groups"])
        except (KeyError, ValueError) as e:
            raise DataError(f"{path}: damaged checkpoint, unreadable progress record ({e})") from None
        ok = (0 <= epoch <= self.config.epochs and isinstance(history, list) and len(history) == epoch
              and all(isinstance(r, dict) for r in history) and isinstance(scalars, dict)
              and all(isinstance(k, str) and k.split(".", 1)[0].isdigit() for k in scalars)
              and isinstance(groups, list) and len(groups) == len(self.optimizer.param_groups)
              and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                      and len(g["params"]) == len(own["params"])
                      for g, own in zip(groups, self.optimizer.param_groups)))
        if not ok:
            raise DataError(f"{path}: damaged checkpoint, its epoch ({meta.get('epoch')}), history or optimiser "
                            "groups do not fit this training")
        return state, scalars, groups, epoch, history

    def _load_best(self, path: Path) -> tuple[float, dict[str, Tensor]]:
        """The best epoch's weights and score saved by `fit(select=...)`, checked like a checkpoint."""
        tensors, meta = load_tensors(path)
        provenance.check(path, meta)
        check_state(tensors, self.model.state_dict(), str(path))
        try:
            score = float(meta["score"])
        except (KeyError, ValueError):
            raise DataError(f"{path}: damaged checkpoint, no selection score") from None
        if not math.isfinite(score):
            raise DataError(f"{path}: damaged checkpoint, selection score {score}")
        return score, tensors

    # --- loop -----------------------------------------------------------------------------------------
    def _batches(self, data: ImageDataset) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
        perm = torch.randperm(len(data), generator=self.generator).tolist()
        b = self.config.batch_size
        chunks = [perm[i:i + b] for i in range(0, len(perm), b)]
        if self.world > 1:  # equal steps on every rank: the last partial global batch is dropped
            share = b // self.world
            chunks = [c[self.rank * share:(self.rank + 1) * share] for c in chunks if len(c) == b]
        if self.config.num_workers == 0:
            return (_BatchView(data)[c] for c in chunks)
        return torch.utils.data.DataLoader(_BatchView(data), sampler=chunks, batch_size=None,
                                           num_workers=self.config.num_workers,
                                           pin_memory=self.device.type == "cuda")

    def train_epoch(self, data: ImageDataset, loss_fn: LossFn | None = None) -> float:
        """One pass over `data` (with `loss_fn`, default the trainer's); returns the mean loss."""
        loss_fn = loss_fn or self.loss_fn
        c, dev = self.config, self.device
        lr = self.lr_at(self.epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.model.train()
        total, count = 0.0, 0
        autocast = c.amp and dev.type == "cuda"
        bar = tqdm(self._batches(data), total=math.ceil(len(data) / c.batch_size), leave=False,
                   disable=not c.progress or self.rank > 0, desc=f"epoch {self.epoch + 1}/{c.epochs}")
        for x, y, idx in bar:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if c.augment == "standard":
                x = standard_augment(x, self.generator, draws=len(x) * self.world, offset=len(x) * self.rank)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(self.net, Batch(x, y, idx))
            if not torch.isfinite(loss):
                raise NumericalError(f"loss became {loss.item()} in epoch {self.epoch + 1}; lower the lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.3f}")
        return total / max(count, 1)

    def fit(self, train: ImageDataset | Sequence[Phase], evals: Mapping[str, ImageDataset] | None = None, *,
            resume: bool = False, stop_after: int | None = None,
            select: Callable[[dict[str, Any]], float] | None = None) -> list[dict[str, Any]]:
        """Train until `config.epochs` (or `stop_after`) epochs are done; returns the per-epoch history.

        `train` is a dataset, or a list of (dataset, loss_fn) phases run in order within every epoch (as
        D-BR's unlearn-then-relearn). With `select`, a score of each epoch's record (higher is better; it
        must only read `evals` that come from training data), the best epoch's weights are restored at the
        end. With `resume`, continue from `checkpoint_dir/last.safetensors` when it exists.
        """
        phases = [(as_image_dataset(train), self.loss_fn)] if not isinstance(train, Sequence) \
            else [(as_image_dataset(d), fn) for d, fn in train]
        if not phases or any(len(d) == 0 for d, _ in phases):
            raise ConfigError("cannot train on an empty dataset")
        ckpt = self.checkpoint_dir / CHECKPOINT_NAME if self.checkpoint_dir else None
        best_path = self.checkpoint_dir / BEST_NAME if self.checkpoint_dir else None
        best: tuple[float, dict[str, Tensor]] | None = None
        if resume and ckpt is not None and ckpt.is_file():
            self.load_checkpoint(ckpt)
            if select is not None and best_path is not None and best_path.is_file():
                best = self._load_best(best_path)
        last = min(self.config.epochs, stop_after) if stop_after is not None else self.config.epochs
        epochs = tqdm(range(self.epoch, last), initial=self.epoch, total=self.config.epochs, desc="training",
                      disable=not self.config.progress)
        for _ in epochs:
            losses = [self.train_epoch(data, fn) for data, fn in phases]
            record: dict[str, Any] = {"epoch": self.epoch + 1, "loss": losses[0] if len(losses) == 1 else losses,
                                      "lr": self.lr_at(self.epoch)}
            for name, data in (evals or {}).items():
                record[name] = accuracy(self.model, data, batch_size=self.config.eval_batch_size)
            if select is not None:
                record["select"] = score = float(select(record))
                if best is None or score > best[0]:
                    best = (score, {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
                    if best_path is not None and self.rank == 0:
                        save_tensors(best_path, best[1], {"score": repr(score), "epoch": str(self.epoch + 1),
                                                          **provenance.stamp(best_path)})
            self.epoch += 1
            self.history.append(record)
            epochs.set_postfix({k: f"{v:.3f}" for k, v in record.items()
                                if k not in {"epoch", "lr"} and isinstance(v, float)})
            if ckpt is not None and self.rank == 0:
                self.save_checkpoint(ckpt)
            if self.world > 1:
                dist.barrier()  # no rank runs ahead of the checkpoint
        if best is not None and self.epoch >= self.config.epochs:
            self.model.load_state_dict(best[1])
        return self.history
