"""CIFAR-style ResNet-18 backbones (3x3 stem, no max-pool): standard and pre-activation, any base width."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """Post-activation residual block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016), as in BackdoorBench's PreActResNet18."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + shortcut


class CifarResNet(nn.Sequential):
    """ResNet-18 layout [2,2,2,2] with widths w, 2w, 4w, 8w; outputs pooled features of size 8w."""

    def __init__(self, width: int = 64, preact: bool = False, in_channels: int = 3) -> None:
        block = PreActBlock if preact else BasicBlock
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)]
        if not preact:
            layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        cin = width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            layers += [block(cin, cout, stride), block(cout, cout, 1)]
            cin = cout
        if preact:
            layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_dim = cin


class SmallCNN(nn.Sequential):
    """Four conv layers (32-32-64-64) + a 256-unit dense layer: fast on CPU."""

    def __init__(self, in_channels: int = 3, image_size: int = 32) -> None:
        def conv(a: int, b: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]

        side = image_size // 4
        super().__init__(*conv(in_channels, 32), *conv(32, 32), nn.MaxPool2d(2),
                         *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(min(side, 8)) if side > 8 else nn.Identity(), nn.Flatten(),
                         nn.Linear(64 * min(side, 8) ** 2, 256), nn.ReLU(inplace=True), nn.Dropout(0.3))
        self.out_dim = 256
