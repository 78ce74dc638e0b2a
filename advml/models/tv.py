"""torchvision architectures as ImageClassifiers, with a small-input (32x32) stem variant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torchvision
from torch import nn

from advml.errors import DataError

# The head each architecture ends with, read and replaced by Identity so that the backbone yields features.
_HEADS: dict[str, tuple[str, ...]] = {
    "resnet18": ("fc",), "resnet50": ("fc",), "vgg16_bn": ("classifier", "6"), "densenet121": ("classifier",),
    "mobilenet_v2": ("classifier", "1"), "inception_v3": ("fc",),
}


def _small_stem(name: str, net: nn.Module, in_channels: int) -> None:
    """Make the network keep resolution on 32x32 inputs (the usual CIFAR adaptation)."""
    if name.startswith("resnet"):
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif name == "vgg16_bn":
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        net.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(0.5),
                                       nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(512, 1000))
    elif name == "densenet121":
        cast(nn.Module, net.features).conv0 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        cast(nn.Module, net.features).pool0 = nn.Identity()
    elif name == "mobilenet_v2":
        cast(nn.Sequential, cast(nn.Sequential, net.features)[0])[0] = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
    elif name == "inception_v3":
        cast(nn.Conv2d, cast(nn.Module, net.Conv2d_1a_3x3).conv).stride = (1, 1)
        net.maxpool1 = nn.Identity()
        net.maxpool2 = nn.Identity()


def build_torchvision(name: str, *, pretrained: bool, small_input: bool,
                      in_channels: int = 3) -> tuple[nn.Module, int, nn.Linear | None]:
    """A torchvision network with its classification layer removed, its feature size, and the removed
    ImageNet head when the weights are pretrained."""
    fn: Callable[..., nn.Module] = getattr(torchvision.models, name)
    kwargs: dict = {}
    if name == "inception_v3":
        kwargs = {"aux_logits": pretrained, "init_weights": not pretrained, "transform_input": False}
    weights = "DEFAULT" if pretrained else None
    try:
        net = fn(weights=weights, **kwargs)
    except Exception as e:  # download errors (URLError, OSError, RuntimeError) differ by platform
        raise DataError(f"pretrained weights for {name} could not be loaded ({type(e).__name__}: {e}); "
                        "put the file in $TORCH_HOME/hub/checkpoints or use pretrained=False") from None
    if name == "inception_v3":
        net.aux_logits, net.AuxLogits = False, None  # type: ignore[assignment]  # torch's __setattr__ typing
    if small_input:
        _small_stem(name, net, in_channels)
    elif in_channels != 3:
        raise DataError(f"{name} with the standard stem takes 3-channel images")
    path = _HEADS[name]
    parent: Any = net  # walked by attribute name: any submodule
    for p in path[:-1]:
        parent = getattr(parent, p)
    head = parent[int(path[-1])] if path[-1].isdigit() else getattr(parent, path[-1])
    if path[-1].isdigit():
        parent[int(path[-1])] = nn.Identity()
    else:
        setattr(parent, path[-1], nn.Identity())
    return net, head.in_features, head if pretrained else None
