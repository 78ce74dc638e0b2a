"""The model registry: `build_model("resnet18_narrow", num_classes=10)` -> an ImageClassifier."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from torch import nn

from advml.errors import ConfigError, DataError
from advml.models import cifar_tv
from advml.models.airnet import AirNet
from advml.models.cifar_resnet import CifarResNet, SmallCNN
from advml.models.cifar_vgg import CifarVGG
from advml.models.tv import build_torchvision
from advml.models.wrapper import ImageClassifier
from advml.registry import Registry
from advml.utils.io import load_state_dict

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# A backbone factory: (image_size, in_channels, pretrained, **options) -> (backbone, feature_dim[, pretrained head])
BackboneFactory = Callable[..., tuple[nn.Module, int] | tuple[nn.Module, int, nn.Linear | None]]
MODELS: Registry[BackboneFactory] = Registry("model")


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ConfigError(f"model {name!r} has no pretrained weights; use pretrained=False")


def _check_width(width: object) -> None:
    if not isinstance(width, int) or width < 1:
        raise ConfigError(f"width must be a positive integer, got {width!r}")


@MODELS.register("cnn_small", "4-layer CNN (32-32-64-64) + 256-unit dense layer; fastest on CPU")
def _cnn_small(image_size: int, in_channels: int, pretrained: bool) -> tuple[nn.Module, int]:
    _no_pretrained("cnn_small", pretrained)
    net = SmallCNN(in_channels, image_size)
    return net, net.out_dim


@MODELS.register("resnet18_narrow", "CIFAR ResNet-18 with base width 16 (set width=...); CPU default for defenses")
def _resnet18_narrow(image_size: int, in_channels: int, pretrained: bool, width: int = 16) -> tuple[nn.Module, int]:
    _no_pretrained("resnet18_narrow", pretrained)
    _check_width(width)
    net = CifarResNet(width=width, in_channels=in_channels)
    return net, net.out_dim


@MODELS.register("vgg11_narrow", "CIFAR VGG-11 with batch norm and base width 32 (set width=...); a fast second family")
def _vgg11_narrow(image_size: int, in_channels: int, pretrained: bool, width: int = 32) -> tuple[nn.Module, int]:
    _no_pretrained("vgg11_narrow", pretrained)
    _check_width(width)
    net = CifarVGG("vgg11", width=width, in_channels=in_channels)
    return net, net.out_dim


@MODELS.register("airnet", "airbench's CIFAR net: fixed whitening stem, 3 conv groups (widths=[64, 256, 256]); "
                 "the fast recipe's model (preset cifar_fast)")
def _airnet(image_size: int, in_channels: int, pretrained: bool,
            widths: tuple[int, int, int] | list[int] = (64, 256, 256)) -> tuple[nn.Module, int]:
    _no_pretrained("airnet", pretrained)
    if not isinstance(widths, (list, tuple)) or len(widths) != 3:
        raise ConfigError(f"airnet widths must be a list of 3 positive integers, got {widths!r}")
    for w in widths:
        _check_width(w)
    net = AirNet(tuple(widths), in_channels=in_channels)  # type: ignore[arg-type]
    return net, net.out_dim


@MODELS.register("preact_resnet18", "Pre-activation ResNet-18, width 64 (BackdoorBench's default model)")
def _preact_resnet18(image_size: int, in_channels: int, pretrained: bool, width: int = 64) -> tuple[nn.Module, int]:
    _no_pretrained("preact_resnet18", pretrained)
    net = CifarResNet(width=width, preact=True, in_channels=in_channels)
    return net, net.out_dim


@MODELS.register("densenet_narrow", "DenseNet-BC-40 (3 blocks of 6, growth 12; set block_config=...), CIFAR stem; "
                 "a transfer family")
def _densenet_narrow(image_size: int, in_channels: int, pretrained: bool, growth_rate: int = 12,
                     block_config: tuple[int, ...] | list[int] = (6, 6, 6)) -> tuple[nn.Module, int]:
    _no_pretrained("densenet_narrow", pretrained)
    _check_width(growth_rate)
    return cifar_tv.densenet(in_channels, growth_rate, tuple(block_config))


@MODELS.register("mobilenet_narrow", "MobileNetV2 at width 0.5 (set width_mult=...), CIFAR stem; a transfer family")
def _mobilenet_narrow(image_size: int, in_channels: int, pretrained: bool,
                      width_mult: float = 0.5) -> tuple[nn.Module, int]:
    _no_pretrained("mobilenet_narrow", pretrained)
    return cifar_tv.mobilenet(in_channels, width_mult)


@MODELS.register("vit_tiny", "ViT with patch 4, depth 6, 4 heads, dim 128 (torchvision's); fixed input size; "
                 "the transfer zoo's far family")
def _vit_tiny(image_size: int, in_channels: int, pretrained: bool, patch_size: int = 4, depth: int = 6,
              heads: int = 4, dim: int = 128, mlp_dim: int = 256) -> tuple[nn.Module, int]:
    _no_pretrained("vit_tiny", pretrained)
    return cifar_tv.vit(image_size, in_channels, patch_size, depth, heads, dim, mlp_dim)


def _tv_factory(name: str) -> BackboneFactory:
    def factory(image_size: int, in_channels: int, pretrained: bool,
                small_input: bool | None = None) -> tuple[nn.Module, int, nn.Linear | None]:
        small = (image_size < 64 and not pretrained) if small_input is None else small_input
        if name == "inception_v3" and not small and image_size < 75:
            raise ConfigError("inception_v3 needs images of at least 75x75 (or small_input=True)")
        return build_torchvision(name, pretrained=pretrained, small_input=small, in_channels=in_channels)

    return factory


for _name, _desc in [("resnet18", "torchvision ResNet-18"), ("resnet50", "torchvision ResNet-50"),
                     ("vgg16_bn", "torchvision VGG-16 with batch norm"), ("densenet121", "torchvision DenseNet-121"),
                     ("mobilenet_v2", "torchvision MobileNetV2"), ("inception_v3", "torchvision Inception-v3")]:
    MODELS.add(_name, _tv_factory(_name), f"{_desc}; ImageNet weights with pretrained=True; 32x32 stem when small")


def build_model(name: str, num_classes: int, *, image_size: int = 32, in_channels: int = 3,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                pretrained: bool = False, weights: str | os.PathLike[str] | None = None,
                **options: object) -> ImageClassifier:
    """Build a registered architecture as an ImageClassifier taking [0,1] images of the given size."""
    factory = MODELS.get(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    try:
        backbone, dim, *head = factory(image_size=image_size, in_channels=in_channels, pretrained=pretrained,
                                       **options)
    except TypeError as e:
        raise ConfigError(f"model {name!r}: {e}") from None
    if pretrained:
        # torchvision's Inception weights expect inputs in [-1, 1] (its transform_input); others ImageNet stats
        mean, std = ((0.5,) * 3, (0.5,) * 3) if name == "inception_v3" else (IMAGENET_MEAN, IMAGENET_STD)
    mean = tuple(mean) if mean is not None else (0.5,) * in_channels
    std = tuple(std) if std is not None else (0.5,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(f"mean/std need {in_channels} values, got {len(mean)}/{len(std)}")
    model = ImageClassifier(backbone, dim, num_classes, mean, std)
    if head and head[0] is not None and num_classes == head[0].out_features:
        model.head = head[0]  # keep the ImageNet classifier when the classes are ImageNet's
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load weights from a safetensors (or weights_only torch) file; names and shapes must match."""
    state = load_state_dict(path)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        parts = [f"{len(missing)} missing (e.g. {missing[:2]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})" if unexpected else "",
                 f"{len(bad)} with other shapes (e.g. {bad[:2]})" if bad else ""]
        raise DataError(f"{path}: weights do not fit this model: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state)
    return model
