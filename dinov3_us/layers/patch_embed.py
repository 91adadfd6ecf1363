"""Patch embedding: a strided convolution from (B, C, H, W) images to (B, H/p, W/p, D) tokens."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else tuple(x)


class PatchEmbed(nn.Module):
    """Conv2d(in_chans, embed_dim, kernel=stride=patch_size); `flatten_embedding` gives (B, N, D)."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        flatten_embedding: bool = True,
    ) -> None:
        super().__init__()
        self.img_size, self.patch_size = _pair(img_size), _pair(patch_size)
        self.patches_resolution = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.flatten_embedding = flatten_embedding
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, H/p, W/p, D] (or [B, HW/p^2, D] when flattening)."""
        _, C, H, W = x.shape
        if C != self.in_chans:
            raise ValueError(f"PatchEmbed expects {self.in_chans} input channels, got input of shape {tuple(x.shape)}")
        if H % self.patch_size[0] or W % self.patch_size[1]:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        x = self.proj(x)  # [B, D, H/p, W/p]
        x = x.permute(0, 2, 3, 1)  # [B, H/p, W/p, D]
        return x.flatten(1, 2) if self.flatten_embedding else x

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, as the official init."""
        bound = math.sqrt(1 / (self.in_chans * self.patch_size[0] * self.patch_size[1]))
        nn.init.uniform_(self.proj.weight, -bound, bound)
        if self.proj.bias is not None:
            nn.init.uniform_(self.proj.bias, -bound, bound)


def rgb_to_gray_patch_weight(weight: torch.Tensor) -> torch.Tensor:
    """Turn a 3-channel patch-embedding kernel [D, 3, p, p] into a 1-channel one [D, 1, p, p].

    Summing the RGB filters gives the same response to a gray image (R = G = B = x) as the
    3-channel kernel, so official natural-image weights load into `in_chans=1` backbones.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected a patch-embedding weight of shape [D, 3, p, p], got {tuple(weight.shape)}")
    return weight.sum(dim=1, keepdim=True)
