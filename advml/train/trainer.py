"""The one training loop: SGD/Adam, cosine / multistep / one-cycle schedules, batched augmentation on the device,
bf16 autocast + channels_last where the device has bf16 units, lookahead, per-epoch evaluation, atomic checkpoints
and resume. Defenses plug in their own loss through `loss_fn` (advml.train.config)."""

from __future__ import annotations

import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from advml import provenance
from advml.data.base import ImageDataset, as_image_dataset
from advml.data.batches import BatchView, index_device, random_rotate, resident, standard_augment
from advml.errors import ConfigError, DataError, NumericalError
from advml.metrics import accuracy
from advml.train.config import Batch, LossFn, Phase, TrainConfig, cross_entropy
from advml.utils.checks import check_progress, check_state
from advml.utils.io import load_json, load_tensors, save_tensors, write_json
from advml.utils.precision import (
    autocast,
    resolve_precision,
    set_precision,
)
from advml.utils.runtime import resolve_device
from advml.utils.state import load_optimizer, model_state, optimizer_tensors

CHECKPOINT_NAME = "last.safetensors"
BEST_NAME = "best.safetensors"
RESIDENT_BYTES = 4 << 30  # a training set up to this size is held as one tensor on the device
DATA_INIT_IMAGES = 5000  # images a model's data-dependent init sees (airbench: 5,000)
_FLIP_STREAM = 0x5EED_F11B  # the alternating flip's fixed per-sample draw, apart from the data-order stream


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
        self.precision = resolve_precision(self.config.amp, self.device, model)
        self.model = set_precision(model.to(self.device), self.precision)
        self.loss_fn = functools.partial(cross_entropy, label_smoothing=self.config.label_smoothing) \
            if loss_fn is cross_entropy and self.config.label_smoothing else loss_fn
        self.seed = seed
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        self.optimizer = self._optimizer(params)
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
        self.compiled = False
        if self.config.compile:
            self._compile()
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps taken (the one-cycle schedule and lookahead count them)
        self.history: list[dict[str, Any]] = []
        self.slow: dict[str, Tensor] | None = None  # lookahead's slow weights
        self.timing: dict[str, Any] = {"train_seconds": 0.0, "images": 0, "compile_seconds": None}

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        c = self.config
        groups: list[dict[str, Any]] = [{"params": params}]
        if c.norm_bias_lr_scale != 1.0:  # batch-norm shifts at a higher lr, the same weight decay per step
            norm = {id(m.bias) for m in self.model.modules()
                    if isinstance(m, nn.modules.batchnorm._NormBase) and m.bias is not None}
            shifts = [p for p in params if id(p) in norm]
            groups = [{"params": [p for p in params if id(p) not in norm]},
                      {"params": shifts, "lr_scale": c.norm_bias_lr_scale,
                       "weight_decay": c.weight_decay / c.norm_bias_lr_scale}]
        if c.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                   nesterov=c.nesterov and c.momentum > 0)
        return torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)

    def _compile(self) -> None:
        dynamo = getattr(torch, "_dynamo", None)
        if dynamo is None or not dynamo.is_dynamo_supported():
            warnings.warn("torch.compile is not available here; training runs eagerly", stacklevel=3)
            return
        self.net, self.compiled = cast(nn.Module, torch.compile(self.net)), True

    # --- schedule -------------------------------------------------------------------------------------
    def lr_at(self, epoch: float) -> float:
        """Learning rate at (fractional) epoch `epoch`: warm-up, then cosine / multistep / constant per whole
        epoch, or one-cycle per step."""
        c = self.config
        if c.schedule == "onecycle":
            frac = min(max(epoch / c.epochs, 0.0), 1.0)
            if frac < c.onecycle_peak:
                t = frac / c.onecycle_peak
                return c.lr * (c.onecycle_start * (1 - t) + t)
            t = (frac - c.onecycle_peak) / (1 - c.onecycle_peak)
            return c.lr * ((1 - t) + c.onecycle_end * t)
        epoch = int(epoch)
        if epoch < c.warmup_epochs:
            return c.lr * (epoch + 1) / (c.warmup_epochs + 1)
        if c.schedule == "cosine":
            span = max(c.epochs - c.warmup_epochs, 1)
            return c.lr * 0.5 * (1 + math.cos(math.pi * (epoch - c.warmup_epochs) / span))
        if c.schedule == "multistep":
            return c.lr * c.gamma ** sum(epoch >= m for m in c.milestones)
        return c.lr

    def _set_lr(self, epoch: float) -> None:
        lr = self.lr_at(epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    # --- lookahead ------------------------------------------------------------------------------------
    def _lookahead(self, total_steps: int, final: bool = False) -> None:
        """airbench's lookahead: slow = lerp(slow, fast, 1 - decay), fast = slow; at the end fast = slow."""
        state = self.model.state_dict()
        if self.slow is None:  # a model trained from a later epoch by another Trainer
            self.slow = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
        decay = 1.0 if final else self.config.lookahead_decay * (self.step / max(total_steps, 1)) ** 3
        with torch.no_grad():
            for k, slow in self.slow.items():
                slow.lerp_(state[k], 1 - decay)
                state[k].copy_(slow)

    # --- checkpoints ----------------------------------------------------------------------------------
    def _config_key(self) -> str:
        return json.dumps(provenance.train_key(self.config.model_dump()), sort_keys=True)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write model, optimizer, RNG and progress to one safetensors file, atomically."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"slow.{k}": v for k, v in (self.slow or {}).items()})
        optim, scalars = optimizer_tensors(self.optimizer, "optim")
        tensors.update(optim)
        tensors["rng.data"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"epoch": str(self.epoch), "step": str(self.step), "history": json.dumps(self.history),
                "config": self._config_key(), "seed": str(self.seed),
                "param_groups": json.dumps(self.optimizer.state_dict()["param_groups"]),
                "optim_scalars": json.dumps(scalars), **provenance.stamp(path)}  # the run's fingerprint
        save_tensors(path, tensors, meta)
        # wall-clock figures beside the checkpoint, not in it: a checkpoint's content is a function of the seed
        write_json(Path(path).with_suffix(".timing.json"), self.timing)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore everything `save_checkpoint` wrote; the training settings must be the same, and every tensor and
        record is checked (keys, shapes, finite values, RNG states, history) before any of it is loaded."""
        tensors, meta = load_tensors(path)
        provenance.check(path, meta)  # written by this run (data, attack, model, defense...), or refused
        if meta.get("config") != self._config_key() or meta.get("seed") != str(self.seed):
            raise ConfigError(f"{path}: checkpoint was written with other training settings or seed; "
                              "resume with the same settings or use another output folder")
        state, scalars, groups, epoch, history = check_progress(
            path, tensors, meta, self.model, self.optimizer, self.generator, self.config.epochs)
        slow = {k[5:]: v.to(self.device) for k, v in tensors.items() if k.startswith("slow.")}
        if slow:  # lookahead's slow weights: the model's floating-point entries
            check_state(slow, {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}, str(path))
        self.model.load_state_dict(model_state(tensors))
        self.slow = slow or None
        load_optimizer(self.optimizer, state, scalars, groups)
        self.generator.set_state(tensors["rng.data"])
        torch.set_rng_state(tensors["rng.torch"])
        self.epoch, self.history = epoch, history
        try:
            self.step = int(meta.get("step", "0"))
        except ValueError:
            raise DataError(f"{path}: damaged checkpoint, unreadable step count") from None
        timing = Path(path).with_suffix(".timing.json")
        if timing.is_file():  # the time spent before the interruption: timings sum over resumes
            saved = load_json(timing)
            if isinstance(saved, dict):
                self.timing.update({k: v for k, v in saved.items() if k in self.timing
                                    and (v is None or isinstance(v, (int, float)))})

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

    # --- data -----------------------------------------------------------------------------------------
    def resident(self, data: ImageDataset) -> ImageDataset:
        """`data` as one tensor on the training device (see `advml.data.batches.resident`)."""
        return data if self.config.num_workers else resident(data, self.device, RESIDENT_BYTES)

    def _data_init(self, data: ImageDataset) -> None:
        """A model that asks for it (e.g. AirNet's whitening) is initialised from a seeded random sample."""
        init = getattr(self.model, "data_init", None)
        if init is None or not getattr(self.model, "needs_data_init", False):
            return
        gen = torch.Generator().manual_seed(self.seed ^ 0xDA7A)
        idx = torch.randperm(len(data), generator=gen)[:DATA_INIT_IMAGES]
        init(data.get_batch(idx.to(index_device(data)))[0].to(self.device))

    def _batches(self, data: ImageDataset) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
        perm = torch.randperm(len(data), generator=self.generator)
        b = self.config.batch_size
        chunks = list(perm.split(b))
        if self.world > 1:  # equal steps on every rank: the last partial global batch is dropped
            share = b // self.world
            chunks = [c[self.rank * share:(self.rank + 1) * share] for c in chunks if len(c) == b]
        if self.config.num_workers == 0:
            dev = index_device(data)
            return ((*data.get_batch(c.to(dev)), c) for c in chunks)
        return torch.utils.data.DataLoader(BatchView(data), sampler=[c.tolist() for c in chunks], batch_size=None,
                                           num_workers=self.config.num_workers,
                                           pin_memory=self.device.type == "cuda")

    def _flips(self, n: int, device: torch.device) -> Tensor | None:
        """The alternating flip's per-sample choice for this epoch (None: random flips)."""
        if self.config.flip != "alternating":
            return None
        base = torch.rand(n, generator=torch.Generator().manual_seed(self.seed ^ _FLIP_STREAM)) < 0.5
        return (base ^ bool(self.epoch % 2)).to(device)

    # --- loop -----------------------------------------------------------------------------------------
    def train_epoch(self, data: ImageDataset, loss_fn: LossFn | None = None, *,
                    total_steps: int | None = None) -> float:
        """One pass over `data` (with `loss_fn`, default the trainer's); returns the mean loss."""
        loss_fn = loss_fn or self.loss_fn
        c, dev, prec = self.config, self.device, self.precision
        steps = math.ceil(len(data) / c.batch_size) if self.world == 1 else len(data) // c.batch_size
        total_steps = total_steps or steps * c.epochs
        self._set_lr(self.epoch)
        self.model.train()
        total, count = torch.zeros((), dtype=torch.float32 if dev.type == "mps" else torch.float64, device=dev), 0
        flips = self._flips(len(data), index_device(data))
        bar = tqdm(self._batches(data), total=steps, leave=False, disable=not c.progress or self.rank > 0,
                   desc=f"epoch {self.epoch + 1}/{c.epochs}")
        start = time.perf_counter()
        for i, (x, y, idx) in enumerate(bar):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if c.augment == "standard":
                x = standard_augment(x, self.generator, c.crop_padding, draws=len(x) * self.world,
                                     offset=len(x) * self.rank, pad_mode=c.pad_mode,
                                     flip=flips[idx] if flips is not None else None,
                                     channels_last=prec.channels_last)
                if c.rotation > 0:
                    x = random_rotate(x, c.rotation, self.generator, draws=len(x) * self.world,
                                      offset=len(x) * self.rank)
            elif prec.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if c.schedule == "onecycle":
                self._set_lr(self.epoch + i / steps)
            t0 = time.perf_counter()
            loss = self._step(loss_fn, Batch(x, y, idx))
            if self.compiled and self.timing["compile_seconds"] is None:
                self.timing["compile_seconds"] = time.perf_counter() - t0
            self.step += 1
            if c.lookahead_every and self.step % c.lookahead_every == 0:
                self._lookahead(total_steps)
            total += loss.detach().to(total.dtype) * len(idx)
            count += len(idx)
            if i % 25 == 24 or i == steps - 1:  # read the loss (a device sync) only now and then
                mean = float(total) / max(count, 1)
                if not math.isfinite(mean):
                    raise NumericalError(f"loss became {mean} in epoch {self.epoch + 1}; lower the lr")
                bar.set_postfix(loss=f"{mean:.3f}")
        self.timing["train_seconds"] += time.perf_counter() - start
        self.timing["images"] += count
        mean = float(total) / max(count, 1)
        if not math.isfinite(mean):
            raise NumericalError(f"loss became {mean} in epoch {self.epoch + 1}; lower the lr")
        return mean

    def _step(self, loss_fn: LossFn, batch: Batch) -> Tensor:
        try:
            with autocast(self.device, self.precision.amp):
                loss = loss_fn(self.net, batch)
        except Exception as e:  # torch.compile fails on first use where its compiler is missing
            if not self.compiled or self.timing["compile_seconds"] is not None:
                raise
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); training runs eagerly",
                          stacklevel=2)
            self.net, self.compiled = self.model, False
            return self._step(loss_fn, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

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
        if self.epoch < last:
            phases = [(self.resident(d), fn) for d, fn in phases]
            if self.epoch == 0:
                self._data_init(phases[0][0])
                if self.config.lookahead_every:
                    self.slow = {k: v.detach().clone() for k, v in self.model.state_dict().items()
                                 if v.is_floating_point()}
        b = self.config.batch_size
        total_steps = self.config.epochs * sum(math.ceil(len(d) / b) if self.world == 1 else len(d) // b
                                               for d, _ in phases)
        epochs = tqdm(range(self.epoch, last), initial=self.epoch, total=self.config.epochs, desc="training",
                      disable=not self.config.progress)
        for _ in epochs:
            losses = [self.train_epoch(data, fn, total_steps=total_steps) for data, fn in phases]
            if self.config.lookahead_every and self.epoch + 1 == self.config.epochs:
                self._lookahead(total_steps, final=True)
            record: dict[str, Any] = {"epoch": self.epoch + 1, "loss": losses[0] if len(losses) == 1 else losses,
                                      "lr": self.lr_at(self.epoch)}
            if select is not None or self.epoch + 1 == last or (self.epoch + 1) % self.config.eval_every == 0:
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

