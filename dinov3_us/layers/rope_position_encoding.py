"""Axial 2D rotary position embedding (RoPE) of DINOv3, with its training-time coordinate augmentations."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn


class RopePositionEmbedding(nn.Module):
    """sin/cos tables for patch tokens on an H x W grid, no learnable weights.

    Periods come from `base` (period_i = base ** (4 i / D_head)) or from `min_period` + `max_period`
    (geometric between them). Coordinates are patch centres mapped to [-1, 1], normalised by H and W
    separately, by min(H, W) or by max(H, W). In training, `shift_coords` adds a uniform shift,
    `jitter_coords` scales each axis and `rescale_coords` scales both axes by a log-uniform factor.
    """

    def __init__(
        self,
        embed_dim: int,
        *,
        num_heads: int,
        base: float | None = 100.0,
        min_period: float | None = None,
        max_period: float | None = None,
        normalize_coords: Literal["min", "max", "separate"] = "separate",
        shift_coords: float | None = None,
        jitter_coords: float | None = None,
        rescale_coords: float | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ):
        super().__init__()
        if embed_dim % (4 * num_heads) != 0:
            raise ValueError(f"RoPE needs embed_dim ({embed_dim}) divisible by 4 * num_heads ({4 * num_heads})")
        both_periods = min_period is not None and max_period is not None
        if (base is None and not both_periods) or (base is not None and both_periods):
            raise ValueError("RoPE needs either `base` or both `min_period` and `max_period`, not both")
        if normalize_coords not in ("min", "max", "separate"):
            raise ValueError(f"normalize_coords must be 'min', 'max' or 'separate', got {normalize_coords!r}")
        self.base, self.min_period, self.max_period = base, min_period, max_period
        self.D_head = embed_dim // num_heads
        self.normalize_coords = normalize_coords
        self.shift_coords, self.jitter_coords, self.rescale_coords = shift_coords, jitter_coords, rescale_coords
        self.dtype = dtype
        # persistent: the official checkpoints carry `rope_embed.periods`
        self.register_buffer("periods", torch.empty(self.D_head // 4, device=device, dtype=dtype), persistent=True)
        self._init_weights()

    def _init_weights(self) -> None:
        """Fill `periods` from `base` or from `min_period`/`max_period`."""
        dd = {"device": self.periods.device, "dtype": self.dtype}
        n = self.D_head // 4
        if self.base is not None:
            periods = self.base ** (2 * torch.arange(n, **dd) / (self.D_head // 2))  # [D_head / 4]
        else:
            ratio = self.max_period / self.min_period
            periods = ratio ** torch.linspace(0, 1, n, **dd) / ratio * self.max_period  # [min_period, max_period]
        self.periods.data = periods

    def _coords(self, H: int, W: int, dd: dict) -> Tensor:
        if self.normalize_coords == "max":
            h_div = w_div = max(H, W)
        elif self.normalize_coords == "min":
            h_div = w_div = min(H, W)
        else:
            h_div, w_div = H, W
        coords_h = torch.arange(0.5, H, **dd) / h_div  # [H]
        coords_w = torch.arange(0.5, W, **dd) / w_div  # [W]
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)  # [HW, 2]
        return 2.0 * coords - 1.0

    def forward(self, *, H: int, W: int) -> tuple[Tensor, Tensor]:
        """Return (sin, cos), each [H * W, D_head]."""
        dd = {"device": self.periods.device, "dtype": self.dtype}
        coords = self._coords(H, W, dd)  # [HW, 2]
        if self.training and self.shift_coords is not None:
            coords = coords + torch.empty(2, **dd).uniform_(-self.shift_coords, self.shift_coords)[None, :]
        if self.training and self.jitter_coords is not None:
            log_j = math.log(self.jitter_coords)
            coords = coords * torch.empty(2, **dd).uniform_(-log_j, log_j).exp()[None, :]
        if self.training and self.rescale_coords is not None:
            log_r = math.log(self.rescale_coords)
            coords = coords * torch.empty(1, **dd).uniform_(-log_r, log_r).exp()
        angles = 2 * math.pi * coords[:, :, None] / self.periods  # [HW, 2, D_head / 4]
        angles = angles.flatten(1, 2).tile(2)  # [HW, D_head]
        return torch.sin(angles), torch.cos(angles)
