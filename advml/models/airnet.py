"""AirNet: the network of Keller Jordan's airbench (94 % on CIFAR-10 in seconds on a GPU), re-expressed for advml.

A fixed 2x2 whitening convolution computed from training patches (then GELU), three groups of
conv-pool-BN-GELU-conv-BN-GELU, a global max-pool and a 1/9 logit scale. Batch norms keep their scale at 1
(only the shift is learnt) and a high running-average momentum; convolutions start as identity (Dirac) on
their first input channels. Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", arXiv:2404.00498.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class FrozenScaleBN(nn.BatchNorm2d):
    """Batch norm whose scale stays 1; `momentum` as airbench's (weight of the old running value)."""

    def __init__(self, channels: int, momentum: float = 0.6, eps: float = 1e-12) -> None:
        super().__init__(channels, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class DiracConv(nn.Conv2d):
    """3x3 'same' convolution without bias, initialised as identity on its first input channels."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        nn.init.dirac_(w[:w.size(1)])


class ConvGroup(nn.Module):
    """conv -> 2x2 max-pool -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, cin: int, cout: int, momentum: float) -> None:
        super().__init__()
        self.conv1, self.conv2 = DiracConv(cin, cout), DiracConv(cout, cout)
        self.norm1, self.norm2 = FrozenScaleBN(cout, momentum), FrozenScaleBN(cout, momentum)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    """Whitening stem + three conv groups; `features` are the max-pooled last group, scaled by 1/9."""

    whitened: Tensor  # a buffer (register_buffer in __init__)

    def __init__(self, widths: tuple[int, int, int] = (64, 256, 256), in_channels: int = 3,
                 bn_momentum: float = 0.6, scale: float = 1 / 9, whiten_eps: float = 5e-4) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(in_channels, 2 * in_channels * 4, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # fixed by data_init; only its bias is learnt
        self.groups = nn.Sequential(ConvGroup(self.whiten.out_channels, widths[0], bn_momentum),
                                    ConvGroup(widths[0], widths[1], bn_momentum),
                                    ConvGroup(widths[1], widths[2], bn_momentum))
        self.scale, self.whiten_eps, self.out_dim = scale, whiten_eps, widths[2]
        self.register_buffer("whitened", torch.zeros((), dtype=torch.bool))

    @property
    def needs_data_init(self) -> bool:
        """True until `data_init` has set the whitening filters."""
        return not bool(self.whitened)

    @torch.no_grad()
    def data_init(self, x: Tensor) -> None:
        """Whitening filters from the 2x2 patches of normalised images x: eigenvectors / sqrt(eigenvalue + eps),
        with their negatives (airbench's init_whitening_conv)."""
        c, (kh, kw) = x.shape[1], self.whiten.kernel_size
        patches = x.float().unfold(2, kh, 1).unfold(3, kw, 1).transpose(1, 3).reshape(-1, c * kh * kw)
        cov = patches.T.double() @ patches.double() / patches.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0).reshape(-1, c, kh, kw)
        filters = (eigenvectors / torch.sqrt(eigenvalues + self.whiten_eps).view(-1, 1, 1, 1)).float()
        self.whiten.weight.copy_(torch.cat((filters, -filters)))
        self.whitened.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.groups(F.gelu(self.whiten(x)))
        return F.adaptive_max_pool2d(x, 1).flatten(1) * self.scale
