"""TI (Dong et al. 2019): smooth the gradient with a Gaussian kernel (depthwise convolution)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor
from torch.nn import functional as F

from advml.config import Settings
from advml.evasion.base import METHODS, IterativeAttack, Method


def gaussian_kernel(size: int, nsig: float = 3.0) -> Tensor:
    """A normalised size x size Gaussian spanning +-nsig standard deviations (as the TI code builds it)."""
    x = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * x**2)
    k = torch.outer(pdf, pdf)
    return (k / k.sum()).float()


def scaled_kernel_size(size: int, image_size: int, reference: int = 299) -> int:
    """A kernel size given for `reference`-pixel images scaled to `image_size` (odd, at least 3)."""
    s = max(3, round(size * image_size / reference))
    return s if s % 2 else s + 1


class TISettings(Settings):
    """TI's settings."""

    kernel: int = Field(5, ge=1, description="Gaussian kernel size (at 299 px when scale)")
    nsig: float = Field(3.0, gt=0, description="the kernel spans +-nsig standard deviations")
    scale: bool = Field(True, description="scale the kernel size from 299 px to the image size")


@METHODS.register("ti", "Gaussian-smoothed gradient (kernel 5 at 299 px, scaled to the image size)")
class TI(Method):
    """Translation-invariant attack: the gradient convolved with a Gaussian (5x5 in the RAP code at 299,
    15x15 in the TI paper); `scale=True` scales the size to the image size."""

    Settings = TISettings
    settings: TISettings

    def __init__(self, settings: TISettings | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._cache: dict[tuple, Tensor] = {}

    def size_for(self, image_size: int) -> int:
        """The kernel size used for images of this size."""
        s = self.settings
        return scaled_kernel_size(s.kernel, image_size) if s.scale else s.kernel

    def grad(self, attack: IterativeAttack, g: Tensor) -> Tensor:
        c, size = g.shape[1], self.size_for(g.shape[-1])
        key = (size, c, g.device, g.dtype)
        if key not in self._cache:
            k = gaussian_kernel(size, self.settings.nsig).to(g.device, g.dtype)
            self._cache[key] = k.expand(c, 1, size, size).contiguous()
        return F.conv2d(g, self._cache[key], padding=size // 2, groups=c)
