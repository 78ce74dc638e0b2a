"""TI (Dong et al. 2019): smooth the gradient with a Gaussian kernel (depthwise convolution)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

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


@METHODS.register("ti", "Gaussian-smoothed gradient (kernel 5 at 299 px, scaled to the image size)")
class TI(Method):
    """Translation-invariant attack: the gradient convolved with a Gaussian (5x5 in the RAP code at 299,
    15x15 in the TI paper); `scale=True` scales the size to the image size."""

    def __init__(self, kernel: int = 5, nsig: float = 3.0, scale: bool = True) -> None:
        self.kernel, self.nsig, self.scale = kernel, nsig, scale
        self._cache: dict[tuple, Tensor] = {}

    def size_for(self, image_size: int) -> int:
        """The kernel size used for images of this size."""
        return scaled_kernel_size(self.kernel, image_size) if self.scale else self.kernel

    def grad(self, attack: IterativeAttack, g: Tensor) -> Tensor:
        c, size = g.shape[1], self.size_for(g.shape[-1])
        key = (size, c, g.device, g.dtype)
        if key not in self._cache:
            k = gaussian_kernel(size, self.nsig).to(g.device, g.dtype)
            self._cache[key] = k.expand(c, 1, size, size).contiguous()
        return F.conv2d(g, self._cache[key], padding=size // 2, groups=c)
