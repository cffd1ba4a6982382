"""A compact PyTorch copy of torchvision's ResNet (v1.5), for parity tests without torchvision.

Same modules, state-dict names, padding and init as ``torchvision.models.resnet``; ``fc`` is
kept so the importer's handling of ``fc.*`` is exercised.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _bn_conv(cin: int, cout: int, k: int, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = _bn_conv(inplanes, planes, 1, 1)
        self.conv2, self.bn2 = _bn_conv(planes, planes, 3, stride)
        self.conv3, self.bn3 = _bn_conv(planes, 4 * planes, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = _bn_conv(inplanes, planes, 3, stride)
        self.conv2, self.bn2 = _bn_conv(planes, planes, 3, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """``forward`` returns the pooled features (what the flax backbone returns), not fc's."""

    def __init__(self, depth: int = 50, num_classes: int = 1000):
        super().__init__()
        block = Bottleneck if depth >= 50 else BasicBlock
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, count in enumerate(BLOCKS[depth], start=1):
            planes, layers = 64 * 2 ** (stage - 1), []
            for index in range(count):
                stride = 2 if stage > 1 and index == 0 else 1
                downsample = None
                if stride != 1 or inplanes != planes * block.expansion:
                    downsample = nn.Sequential(
                        *_bn_conv(inplanes, planes * block.expansion, 1, stride)
                    )
                layers.append(block(inplanes, planes, stride, downsample))
                inplanes = planes * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial γ, β and running statistics, so eval mode tests more than the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=generator))
                m.bias.copy_(0.1 * torch.randn(n, generator=generator))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                m.running_var.copy_(1 + 0.5 * torch.rand(n, generator=generator))
