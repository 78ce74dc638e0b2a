"""Narrow CIFAR variants of torchvision's DenseNet, MobileNetV2 and ViT: more families for the transfer zoo at a
cost that trains on a CPU (a 32x32 stem that keeps resolution; the classifier removed, its width returned)."""

from __future__ import annotations

import torchvision
from torch import nn

from advml.errors import ConfigError


def densenet(in_channels: int, growth_rate: int = 12, block_config: tuple[int, ...] = (6, 6, 6),
             init_features: int = 24) -> tuple[nn.Module, int]:
    """DenseNet-BC (bottleneck 4x, compression 0.5; Huang et al.'s CIFAR DenseNet-BC-40 at the defaults)."""
    net = torchvision.models.DenseNet(growth_rate=growth_rate, block_config=tuple(block_config),
                                      num_init_features=init_features, bn_size=4)
    net.features.conv0 = nn.Conv2d(in_channels, init_features, 3, 1, 1, bias=False)
    net.features.pool0 = nn.Identity()
    dim = net.classifier.in_features
    net.classifier = nn.Identity()
    return net, dim


def mobilenet(in_channels: int, width_mult: float = 0.5) -> tuple[nn.Module, int]:
    """MobileNetV2 at a width multiplier, its first convolution at stride 1 (total stride 16 on 32x32)."""
    if not 0 < width_mult <= 4:
        raise ConfigError(f"mobilenet width_mult must be in (0, 4], got {width_mult!r}")
    net = torchvision.models.MobileNetV2(width_mult=width_mult)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    dim = net.classifier[1].in_features
    net.classifier = nn.Identity()
    return net, dim


class _ViTFeatures(nn.Module):
    """torchvision's VisionTransformer without its head: the class token's final embedding."""

    def __init__(self, vit: torchvision.models.VisionTransformer) -> None:
        super().__init__()
        vit.heads = nn.Identity()
        self.vit = vit

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.vit(x)


def vit(image_size: int, in_channels: int, patch_size: int = 4, depth: int = 6, heads: int = 4, dim: int = 128,
        mlp_dim: int = 256) -> tuple[nn.Module, int]:
    """A small ViT (patch 4 on 32x32: 64 tokens + class token); takes only image_size x image_size inputs."""
    if in_channels != 3:
        raise ConfigError("vit_tiny takes 3-channel images")
    if image_size % patch_size:
        raise ConfigError(f"vit_tiny: image size {image_size} is not a multiple of patch_size {patch_size}")
    if dim % heads:
        raise ConfigError(f"vit_tiny: dim {dim} is not a multiple of heads {heads}")
    net = torchvision.models.VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=depth,
                                               num_heads=heads, hidden_dim=dim, mlp_dim=mlp_dim)
    return _ViTFeatures(net), dim
