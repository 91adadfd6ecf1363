"""Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(ffn(norm2(x))), with stochastic depth."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dinov3_us.layers.attention import SelfAttention
from dinov3_us.layers.ffn_layers import Mlp
from dinov3_us.layers.layer_scale import LayerScale

Rope = tuple[Tensor, Tensor] | None


class SelfAttentionBlock(nn.Module):
    """The DINOv3 block (official name and key names: norm1, attn, ls1, norm2, mlp, ls2).

    Stochastic depth as in DINOv2/v3: in training, each residual branch is computed on a random
    subset of (1 - drop_path) of the samples and added back scaled by B / subset, which saves the
    compute of the dropped samples instead of multiplying them by zero.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        attn_class: Callable[..., nn.Module] = SelfAttention,
        ffn_layer: Callable[..., nn.Module] = Mlp,
        mask_k_bias: bool = False,
        device=None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_class(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            mask_k_bias=mask_k_bias,
            device=device,
        )
        self.ls1 = LayerScale(dim, init_values=init_values, device=device) if init_values else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = ffn_layer(
            in_features=dim,
            hidden_features=int(dim * ffn_ratio),
            act_layer=act_layer,
            drop=drop,
            bias=ffn_bias,
            device=device,
        )
        self.ls2 = LayerScale(dim, init_values=init_values, device=device) if init_values else nn.Identity()
        self.sample_drop_ratio = drop_path

    def _attn_branch(self, x: Tensor, rope: Rope) -> Tensor:
        return self.ls1(self.attn(self.norm1(x), rope=rope))

    def _ffn_branch(self, x: Tensor, rope: Rope = None) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def _residual(self, x: Tensor, branch: Callable[[Tensor, Rope], Tensor], rope: Rope) -> Tensor:
        b = x.shape[0]
        if not (self.training and self.sample_drop_ratio > 0.0):
            return x + branch(x, rope)
        keep = max(int(b * (1 - self.sample_drop_ratio)), 1)
        idx = torch.randperm(b, device=x.device)[:keep]  # samples that run this branch
        out = branch(x[idx], rope)  # [keep, N, D]
        return torch.index_add(x, 0, idx, out.to(x.dtype), alpha=b / keep)

    def forward(self, x: Tensor | list[Tensor], rope: Rope | list[Rope] = None) -> Tensor | list[Tensor]:
        """x [B, N, D] with rope (sin, cos), or lists of them (crops of different sizes)."""
        if isinstance(x, list):
            ropes = rope if rope is not None else [None] * len(x)
            return [self.forward(t, r) for t, r in zip(x, ropes)]
        x = self._residual(x, self._attn_branch, rope)
        return self._residual(x, self._ffn_branch, rope)
