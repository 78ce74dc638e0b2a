"""CIFAR-style VGG backbones (Simonyan & Zisserman's layouts with batch norm) at any base width."""

from __future__ import annotations

from torch import nn

# conv widths as multiples of the base width; "M" is a 2x2 max-pool (five of them take 32x32 to 1x1)
LAYOUTS: dict[str, list[int | str]] = {
    "vgg11": [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"],
}


class CifarVGG(nn.Sequential):
    """VGG convolutions (3x3, batch norm, ReLU) with widths w..8w, global-pooled to features of size 8w."""

    def __init__(self, layout: str = "vgg11", width: int = 64, in_channels: int = 3) -> None:
        layers: list[nn.Module] = []
        cin = in_channels
        for v in LAYOUTS[layout]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = int(v) * width
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        # global pooling keeps the features 8w-sized for inputs other than 32x32
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_dim = cin
