"""ResNet-50 (He et al., CVPR 2016), the torchvision layout ("v1.5": the stride sits on the 3x3
conv of a bottleneck), written without torchvision. With 100 classes P = 23,659,712; the largest
tensor, the MP prototype, is the first 512x512x3x3 conv (2,359,296 values).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_variant

__all__ = ["ResNet"]


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), plus shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm(out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.downsample(x))


class ResNet(nn.Module):
    """Bottleneck ResNet for ImageNet-style inputs; ``layers=(3, 4, 6, 3)`` is ResNet-50.
    ``bn_affine=False``: every BatchNorm without scale and shift (``--bn_type not-learn``)."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), in_channels: int = 3,
                 num_classes: int = 1000, bn_affine: bool = True) -> None:
        super().__init__()
        norm = functools.partial(nn.BatchNorm2d, affine=bn_affine)
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            norm(64), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1))
        stages, channels = [], 64
        for i, num_blocks in enumerate(layers):
            width = 64 * 2**i
            blocks = [Bottleneck(channels, width, 1 if i == 0 else 2, norm)]
            channels = width * Bottleneck.expansion
            blocks += [Bottleneck(channels, width, 1, norm) for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (B, in, H, W) -> (B, 2048, H/32, W/32)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))  # global average pool -> (B, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register_variant("resnet50", ResNet, "ResNet-50 (PEMN extra figures on 100/200-class ImageNet "
                 "subsets).", layers=(3, 4, 6, 3))
