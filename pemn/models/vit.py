"""A small Vision Transformer for CIFAR-sized inputs (Dosovitskiy et al., ICLR 2021).

The paper uses ViTs of depth 6/8 and dim 256/512 on CIFAR-10 (Fig. 3) with no other detail;
the rest is our choice of a standard small ViT: 4x4 patches, a class token and a learned
position embedding (N(0, 0.02)), pre-norm blocks with ``nn.MultiheadAttention`` (8 heads) and
an MLP of ratio 2 (GELU), no dropout, a final LayerNorm and a linear head on the class token.
"""
from __future__ import annotations

import torch
from torch import nn

from ._registry import register_variant

__all__ = ["VisionTransformer"]


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, dim)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]  # no attention map: faster path
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT-``dim``/``depth`` on ``img_size`` x ``img_size`` images cut into square patches."""

    def __init__(self, dim: int, depth: int, num_heads: int = 8, mlp_ratio: float = 2.0,
                 patch_size: int = 4, img_size: int = 32, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not a multiple of num_heads={num_heads}")
        self.num_classes = num_classes
        self.img_size = img_size
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            # the position embedding has a fixed number of tokens
            raise ValueError(f"expected {self.img_size}x{self.img_size} images, got "
                             f"{tuple(x.shape[-2:])}; build the model with img_size=...")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, N + 1, dim)
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, 0])  # class token -> (B, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# PEMN Fig. 3; the hyperparameters the paper does not give are ours (module docstring)
register_variant("vit_256_d6", VisionTransformer, "ViT-256/6 (PEMN Fig. 3).", dim=256, depth=6)
register_variant("vit_256_d8", VisionTransformer, "ViT-256/8 (PEMN Fig. 3).", dim=256, depth=8)
register_variant("vit_512_d6", VisionTransformer, "ViT-512/6 (PEMN Fig. 3).", dim=512, depth=6)
register_variant("vit_512_d8", VisionTransformer, "ViT-512/8 (PEMN Fig. 3).", dim=512, depth=8)
register_variant("vit_tiny", VisionTransformer, "ViT-64/2 with 4 heads: tiny, for tests (not in "
                 "the paper).", dim=64, depth=2, num_heads=4)
