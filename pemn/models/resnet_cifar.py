"""CIFAR ResNet (He et al., CVPR 2016, section 4.2), as in the official PEMN code: a 3x3 stem,
three stages of ``(depth - 2) / 6`` basic blocks (16, 32, 64 channels), average pooling and a
linear head; every conv is bias-free. Shortcuts where the shape changes: ``option="A"`` (the
paper's) subsamples and zero-pads (P: ResNet20 268,336, ResNet32 461,872, ResNet56 848,944);
``option="B"`` projects with a 1x1 conv + BN (2,560 more weights).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_variant

__all__ = ["CifarResNet"]


class PadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling and zero channels, no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_front = (out_channels - in_channels) // 2  # new channels split on both sides
        self.pad_back = out_channels - in_channels - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))  # pads dim 1 (channels)


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, option: str,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if option == "A":
                self.shortcut = PadShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                    norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32x32 inputs, ``depth = 6n + 2``; ``bn_affine=False``: every
    BatchNorm without scale and shift (``--bn_type not-learn``)."""

    def __init__(self, depth: int = 32, in_channels: int = 3, num_classes: int = 10,
                 option: str = "A", bn_affine: bool = True) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth={depth}: a CIFAR ResNet needs depth = 6n + 2, e.g. 20, 32, 56")
        if option not in ("A", "B"):
            raise ValueError(f"option={option!r}: use 'A' (zero-pad) or 'B' (1x1 projection)")
        n = (depth - 2) // 6
        norm = functools.partial(nn.BatchNorm2d, affine=bn_affine)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = norm(16)
        self.layer1 = self._stage(16, 16, n, 1, option, norm)
        self.layer2 = self._stage(16, 32, n, 2, option, norm)
        self.layer3 = self._stage(32, 64, n, 2, option, norm)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He init, as in the paper; BN keeps (1, 0)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_channels: int, out_channels: int, n: int, stride: int, option: str,
               norm: Callable[[int], nn.Module]) -> nn.Sequential:
        blocks = [BasicBlock(in_channels, out_channels, stride, option, norm)]
        blocks += [BasicBlock(out_channels, out_channels, 1, option, norm) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        return self.layer3(self.layer2(self.layer1(x)))  # (B, 64, H/4, W/4)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))  # global average pool -> (B, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register_variant("resnet20", CifarResNet, "CIFAR ResNet20 (3 blocks per stage; reference size, "
                 "not in the paper).", depth=20)
register_variant("resnet32", CifarResNet, "CIFAR ResNet32 (5 blocks per stage; PEMN Fig. 3, "
                 "Fig. 4).", depth=32)
register_variant("resnet56", CifarResNet, "CIFAR ResNet56 (9 blocks per stage; PEMN Fig. 3, "
                 "Fig. 4).", depth=56)
