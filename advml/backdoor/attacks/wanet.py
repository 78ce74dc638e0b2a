"""WaNet (Nguyen & Tran, ICLR 2021): a fixed smooth warp of the image, plus noise-mode samples, as in BackdoorBench."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from advml.backdoor.attacks.base import ATTACKS, AttackSettings, BackdoorAttack
from advml.backdoor.poisoned import PoisonedDataset
from advml.backdoor.triggers import Trigger
from advml.config import SEED_MAX
from advml.data.base import ImageDataset, as_image_dataset
from advml.errors import ConfigError, InputError
from advml.utils.checks import check_images

_CROSS_STREAM = 0x57A4E7  # separates the noise-mode draws from the poisoned-sample draw of the same seed


class WaNetSettings(AttackSettings):
    """WaNet settings; defaults are BackdoorBench's (config/attack/wanet/default.yaml)."""

    k: int = Field(4, ge=2, description="control grid size: the warp is a k x k random field upsampled (bicubic)")
    s: float = Field(0.5, ge=0, description="warping strength (0 = identity)")
    grid_rescale: float = Field(1.0, gt=0, le=1, description="scales the sampling grid to keep it inside the image")
    cross_ratio: float = Field(2.0, ge=0, description="noise mode: round(cross_ratio * poisoned count) more samples "
                                                      "get the warp plus per-image random noise and keep their labels")
    warp_seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the warping field (the trigger), "
                                                           "independent of the poisoning seed")


def warp_grid(image_shape: tuple[int, int, int], k: int = 4, s: float = 0.5, grid_rescale: float = 1.0,
              seed: int = 0) -> Tensor:
    """WaNet's sampling grid (1,H,W,2) in [-1,1]: identity + s * upsampled k x k field / size, a function of `seed`."""
    _, h, w = image_shape
    if k > min(h, w):
        raise ConfigError(f"wanet k={k} exceeds the image size {h}x{w}")
    gen = torch.Generator().manual_seed(seed)
    ins = torch.rand(1, 2, k, k, generator=gen) * 2 - 1
    ins = ins / ins.abs().mean()
    noise = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    identity = torch.stack((gx, gy), 2)[None]  # grid_sample wants (x, y) = (column, row)
    # BackdoorBench divides by the height for both axes (square images); (W, H) is the same there
    grid = (identity + s * noise / torch.tensor([float(w), float(h)])) * grid_rescale
    return grid.clamp(-1, 1)


class WarpTrigger(Trigger):
    """x' = grid_sample(x, grid) for a fixed grid; `apply_noisy` adds per-image grid noise (WaNet's noise mode)."""

    def __init__(self, grid: Tensor) -> None:
        if grid.ndim != 4 or grid.shape[0] != 1 or grid.shape[-1] != 2:
            raise InputError(f"warp grid must be (1,H,W,2), got {tuple(grid.shape)}")
        self.grid = grid.float()
        h, w = grid.shape[1:3]
        self.size = (int(h), int(w))
        self._scale = torch.tensor([float(w), float(h)])  # noise of +-1 moves a point by about half a pixel
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._cache:
            self._cache[device] = (self.grid.to(device), self._scale.to(device))
        return self._cache[device]

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[2:]) != self.size:
            raise InputError(f"warp is for {self.size[0]}x{self.size[1]} images, got {tuple(x.shape[1:])}")

    @staticmethod
    def _sample(x: Tensor, grid: Tensor) -> Tensor:
        # the clamped grid stays inside the image, so each output is a convex mix; clamp only float rounding
        return F.grid_sample(x, grid.to(x.dtype), align_corners=True).clamp_(0, 1)

    def _apply(self, x: Tensor, train: bool) -> Tensor:
        self._check(x)
        grid, _ = self._on(x.device)
        return self._sample(x, grid.expand(x.shape[0], -1, -1, -1))

    def apply_noisy(self, x: Tensor, noise: Tensor) -> Tensor:
        """`x` warped with the grid plus `noise` (N,H,W,2) in [-1,1] divided by the image size, clamped to [-1,1]."""
        check_images(x, "trigger input")
        self._check(x)
        if noise.shape != (x.shape[0], *self.size, 2):
            raise InputError(f"noise must be ({x.shape[0]}, {self.size[0]}, {self.size[1]}, 2), "
                             f"got {tuple(noise.shape)}")
        grid, scale = self._on(x.device)
        return self._sample(x, (grid + noise.to(x.device) / scale).clamp(-1, 1))


def noise_from_codes(codes: Tensor) -> Tensor:
    """uint8 codes -> float noise in (-1, 1): the centres of 256 equal bins, i.e. uniform noise at 1/128 resolution."""
    return (codes.float() + 0.5) / 128 - 1


class WaNetPoisonedDataset(PoisonedDataset):
    """A PoisonedDataset whose `cross_indices` samples (noise mode) are warped with fixed per-sample noise and keep
    their labels; `poison_flags` marks only the relabelled samples."""

    def __init__(self, base: ImageDataset, poison_indices: Tensor, trigger: WarpTrigger, poisoned_labels: Tensor,
                 cross_indices: Tensor, cross_codes: Tensor, *, train: bool = True,
                 settings: dict[str, Any] | None = None) -> None:
        super().__init__(base, poison_indices, trigger, poisoned_labels, train=train, settings=settings)
        cross = torch.as_tensor(cross_indices, dtype=torch.long)
        if cross.unique().numel() != cross.numel():
            raise ValueError("cross_indices contain duplicates")
        if self.poison_flags[cross].any():
            raise ValueError("cross_indices overlap the poisoned indices")
        if cross_codes.dtype != torch.uint8 or cross_codes.shape[0] != cross.numel():
            raise ValueError("cross_codes must be uint8 with one row per cross index")
        self.trigger: WarpTrigger = trigger
        self.cross_indices, self.cross_codes = cross, cross_codes
        self.cross_flags = torch.zeros(len(base), dtype=torch.bool)
        self.cross_flags[cross] = True
        self._cross_row = torch.full((len(base),), -1, dtype=torch.long)  # sample -> row of cross_codes
        self._cross_row[cross] = torch.arange(cross.numel())

    def get_batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        x, y = super().get_batch(index)
        rows = self._cross_row[index]
        sel = rows >= 0
        if sel.any():
            x[sel] = self.trigger.apply_noisy(x[sel], noise_from_codes(self.cross_codes[rows[sel]]))
        return x, y


@ATTACKS.register("wanet", title="WaNet")
class WaNet(BackdoorAttack):
    """WaNet: a fixed smooth warp (k 4, s 0.5) + noise mode (cross_ratio 2 x as many other samples warped with noise,
    labels kept); rate = fraction of the whole training set (relabelled only)

    WaNet: every poisoned image is warped by one fixed smooth field (seeded by `warp_seed`) and relabelled; in
    noise mode (cross_ratio > 0) other samples get the warp plus random noise and keep their labels."""

    Settings = WaNetSettings
    settings: WaNetSettings
    rate_semantics = ("fraction of the whole training set, drawn from non-target samples (all2one); "
                      "noise-mode samples come on top")

    def build_trigger(self, image_shape: tuple[int, int, int]) -> WarpTrigger:
        s = self.settings
        return WarpTrigger(warp_grid(image_shape, s.k, s.s, s.grid_rescale, s.warp_seed))

    def cross_count(self, labels: Tensor) -> int:
        """How many noise-mode samples: round(cross_ratio * poisoned count)."""
        return round(self.settings.cross_ratio * self.poison_count(labels))

    def poison(self, train: ImageDataset, *, seed: int = 0) -> WaNetPoisonedDataset:
        """The poisoned training set, noise-mode samples included: a pure function of (data, settings, seed)."""
        train = as_image_dataset(train)
        self._check_target(train.num_classes)
        idx = self.select(train.labels, seed)
        new = self.target_labels(train.labels[idx], train.num_classes)
        trigger = cast(WarpTrigger, self.trigger_for(train))  # what build_trigger makes
        rest = torch.ones(len(train), dtype=torch.bool)
        rest[idx] = False
        pool = rest.nonzero().flatten()
        m = self.cross_count(train.labels)
        if m > pool.numel():
            raise ConfigError(f"cross_ratio {self.settings.cross_ratio} asks for {m} noise-mode samples but only "
                              f"{pool.numel()} samples are not poisoned; lower cross_ratio or rate")
        gen = torch.Generator().manual_seed(_stream_seed(seed, _CROSS_STREAM))
        cross = pool[torch.randperm(pool.numel(), generator=gen)[:m]].sort().values
        # stored as uint8 (1/128 of the noise range) to keep 4x less memory than float noise per sample
        codes = torch.randint(0, 256, (m, *trigger.size, 2), generator=gen, dtype=torch.uint8)
        return WaNetPoisonedDataset(train, idx, trigger, new, cross, codes, train=True, settings=self.describe())


def _stream_seed(seed: int, stream: int) -> int:
    """A 63-bit seed derived from (seed, stream), so that two uses of one seed draw independent numbers."""
    state = np.random.SeedSequence([seed % 2**64, stream]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
