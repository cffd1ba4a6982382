"""PyTorch networks of the official code, compact: CGDM's LeNet encoder and ``ResClassifier``,
a torchvision-identical ResNet-50 trunk, GVB's bridged head and ``AdversarialNetwork``.

Written from the CGDM and GVB-GD code's network definitions (torchvision is not a dependency).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LeNetEncoder(nn.Module):
    """Channel mean → (conv 5×5 → BN → ReLU → max-pool 2) ×2 → flatten: 1200-d for 32×32."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 32, 5), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 48, 5), nn.BatchNorm2d(48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=1, keepdim=True)
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return x.flatten(1)


class Bottleneck(nn.Module):
    """torchvision's ResNet ``Bottleneck`` (stride on the 3×3 conv, v1.5)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet50(nn.Module):
    """torchvision ``resnet50`` without ``fc``: ``[B, C, H, W]`` → pooled ``[B, 2048]``."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, layers = 64, []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for index in range(blocks):
                stage.append(Bottleneck(inplanes, planes, stride if index == 0 else 1))
                inplanes = planes * Bottleneck.expansion
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class Generator(nn.Module):
    """G: a backbone, then an optional ``Linear(dim → bottleneck)`` (``ResBottle``)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, bottleneck_dim: int = 0) -> None:
        super().__init__()
        self.features = backbone
        self.bottleneck = None
        self.dim = feature_dim
        if bottleneck_dim:
            self.bottleneck = nn.Linear(feature_dim, bottleneck_dim)
            nn.init.normal_(self.bottleneck.weight, 0.0, 0.005)
            nn.init.constant_(self.bottleneck.bias, 0.1)
            self.dim = bottleneck_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return x if self.bottleneck is None else self.bottleneck(x)


class ResClassifier(nn.Module):
    """CGDM's ``ResClassifier``: per width, dropout → Linear → BN1d → ReLU; then Linear."""

    def __init__(self, in_dim: int, widths: Sequence[int], num_classes: int, p: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Dropout(p), nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU()]
            in_dim = width
        layers.append(nn.Linear(in_dim, num_classes))
        self.classifier = nn.Sequential(*layers)
        for m in self.modules():  # utils.py::weights_init
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.normal_(m.bias, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.normal_(m.weight, 1.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class BridgedHead(nn.Module):
    """GVB-G head: ``(fc(f) − gvbg(f), gvbg(f))`` (GVB-GD)."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc, self.gvbg = nn.Linear(in_dim, num_classes), nn.Linear(in_dim, num_classes)
        for layer in (self.fc, self.gvbg):
            nn.init.kaiming_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.gvbg(f)
        return self.fc(f) - z, z


class GVBNet(nn.Module):
    """The MetaAlign base network: G then the bridged head."""

    def __init__(self, generator: Generator, num_classes: int) -> None:
        super().__init__()
        self.g = generator
        self.f = BridgedHead(generator.dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.f(self.g(x))


class AdversarialNetwork(nn.Module):
    """GVB-D: Linear → ReLU → Dropout ×2, then ``(d − b, b)`` with ``b = gvbd(h)``."""

    def __init__(self, in_dim: int, hidden: int = 1024, p: float = 0.5) -> None:
        super().__init__()
        self.ad_layer1, self.ad_layer2 = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden)
        self.ad_layer3, self.gvbd = nn.Linear(hidden, 1), nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(p)
        for layer in (self.ad_layer1, self.ad_layer2, self.ad_layer3, self.gvbd):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dropout(torch.relu(self.ad_layer1(x)))
        h = self.dropout(torch.relu(self.ad_layer2(h)))
        d, b = self.ad_layer3(h)[:, 0], self.gvbd(h)[:, 0]
        return d - b, b


def backbone(name: str, in_channels: int) -> tuple[nn.Module, int]:
    """``(module, feature_dim)`` of ``lenet`` or ``resnet50``."""
    if name == "lenet":
        return LeNetEncoder(), 1200
    if name == "resnet50":
        return ResNet50(in_channels), 2048
    raise ValueError(f"unknown backbone {name!r}")
