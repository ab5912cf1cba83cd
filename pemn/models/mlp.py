"""Multilayer perceptron: flatten, Linear + ReLU layers, a Linear classifier (every Linear with
a bias). ``mlp_paper`` is the paper's One-layer example (arXiv 2210.06699, Eq. 4-6)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._registry import register_variant

__all__ = ["MLP"]


class MLP(nn.Module):
    """``in_features -> hidden[0] -> ... -> hidden[-1] -> num_classes``, ReLU between layers."""

    def __init__(self, in_features: int | None = None, hidden: Sequence[int] = (512, 100, 100),
                 num_classes: int = 10, in_channels: int = 1, img_size: int = 28) -> None:
        super().__init__()
        # a run passes in_channels and img_size, as to image models
        in_features = in_features or in_channels * img_size * img_size
        self.in_features = in_features
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten()]  # (B, C, H, W) or (B, F) -> (B, in_features)
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


register_variant("mlp", MLP, "MLP 784-512-100-100-10 for 28x28 grayscale images (MNIST, "
                 "Fashion-MNIST).", hidden=(512, 100, 100))
register_variant("mlp_paper", MLP, "MLP 512-100-100-100-10: the paper's One-layer worked example "
                 "(Eq. 4-6).", in_features=512, hidden=(100, 100, 100))
