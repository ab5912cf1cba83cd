"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?", TMLR 2023), exactly as the official
PEMN code builds it: a patch stem, ``depth`` blocks of a residual depthwise conv and a pointwise
conv (each followed by act and BN), average pooling and a linear head. No layer has a bias, so
the weights are exactly the paper's P (dim 256, depth 6, 10 classes: 437,248).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from ._registry import register_variant

__all__ = ["ConvMixer"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


class ConvMixer(nn.Module):
    """ConvMixer-``dim``/``depth``; ``bn_affine=False`` is the official code's ``--bn_type
    not-learn`` ablation (every BatchNorm without scale and shift). ``fold=True`` gives every
    block block 0's two conv weights (one Parameter each, as Hidden-Fold networks share the
    weights and mask of blocks of one shape), so a masked model stores one mask per conv kind;
    the BatchNorms stay per block."""

    def __init__(self, dim: int, depth: int, kernel_size: int = 5, patch_size: int = 2,
                 in_channels: int = 3, num_classes: int = 10, act: str = "gelu",
                 bn_affine: bool = True, fold: bool = False) -> None:
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ValueError(f"act={act!r}: use one of {sorted(_ACTIVATIONS)}")
        act_layer = _ACTIVATIONS[act]
        norm = functools.partial(nn.BatchNorm2d, affine=bn_affine)
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, dim, patch_size, stride=patch_size, bias=False),
            act_layer(), norm(dim))
        self.blocks = nn.Sequential(*[
            nn.Sequential(
                Residual(nn.Sequential(
                    nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same", bias=False),
                    act_layer(), norm(dim))),
                nn.Conv2d(dim, dim, 1, bias=False),
                act_layer(), norm(dim))
            for _ in range(depth)])
        if fold:
            for block in self.blocks[1:]:
                block[0].fn[0].weight = self.blocks[0][0].fn[0].weight
                block[1].weight = self.blocks[0][1].weight
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(dim, num_classes, bias=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # (B, in, H, W) -> (B, dim, H/patch, W/patch)
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x))  # (B, dim, h, w) -> (B, dim) -> (B, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register_variant("convmixer_256_d6", ConvMixer, "ConvMixer-256/6 (PEMN Fig. 3, Fig. 5, README).",
                 dim=256, depth=6)
register_variant("convmixer_256_d8", ConvMixer, "ConvMixer-256/8 (PEMN Fig. 3, Fig. 5).",
                 dim=256, depth=8)
register_variant("convmixer_512_d6", ConvMixer, "ConvMixer-512/6 (PEMN Fig. 3).", dim=512, depth=6)
register_variant("convmixer_512_d8", ConvMixer, "ConvMixer-512/8 (PEMN Fig. 3).", dim=512, depth=8)
register_variant("convmixer_128_d4", ConvMixer, "ConvMixer-128/4: small, CPU-sized (not in the "
                 "paper).", dim=128, depth=4)
register_variant("convmixer_64_d4", ConvMixer, "ConvMixer-64/4: tiny, for tests and smoke runs "
                 "(not in the paper).", dim=64, depth=4)
