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

    def _attn_branch(self, xs: list[Tensor], ropes: list[Rope]) -> list[Tensor]:
        if len(xs) == 1:
            return [self.ls1(self.attn(self.norm1(xs[0]), rope=ropes[0]))]
        shapes = [tuple(x.shape[:2]) for x in xs]
        return _split(self.ls1(self.attn.forward_flat(self.norm1(_cat(xs)), shapes, ropes)), xs)

    def _ffn_branch(self, xs: list[Tensor], ropes: list[Rope]) -> list[Tensor]:
        if len(xs) == 1:
            return [self.ls2(self.mlp(self.norm2(xs[0])))]
        return _split(self.ls2(self.mlp(self.norm2(_cat(xs)))), xs)

    def _residual(self, xs: list[Tensor], branch: Callable[[list[Tensor], list[Rope]], list[Tensor]],
                  ropes: list[Rope]) -> list[Tensor]:
        if not (self.training and self.sample_drop_ratio > 0.0):
            return [x + out for x, out in zip(xs, branch(xs, ropes))]
        kept = []  # samples of each crop size that run this branch
        for x in xs:
            keep = max(int(x.shape[0] * (1 - self.sample_drop_ratio)), 1)
            kept.append(torch.randperm(x.shape[0], device=x.device)[:keep])
        # index_select, not x[idx]: the same rows, but its backward is an index_add where x[idx]'s is an
        # accumulating index_put, and faster on CPU (bench/bench_step_parts.py -> bench/results/step_parts.json)
        outs = branch([x.index_select(0, idx) for x, idx in zip(xs, kept)], ropes)  # [keep_i, N_i, D] each
        return [torch.index_add(x, 0, idx, out.to(x.dtype), alpha=x.shape[0] / idx.numel())
                for x, idx, out in zip(xs, kept, outs)]

    def forward(self, x: Tensor | list[Tensor], rope: Rope | list[Rope] = None) -> Tensor | list[Tensor]:
        """x [B, N, D] with rope (sin, cos), or lists of them (crops of different sizes, computed together:
        the linear layers and norms run once over the tokens of every crop, attention per crop size)."""
        if isinstance(x, list):
            xs, ropes = x, (rope if rope is not None else [None] * len(x))
        else:
            xs, ropes = [x], [rope]
        xs = self._residual(xs, self._attn_branch, ropes)
        xs = self._residual(xs, self._ffn_branch, ropes)
        return xs if isinstance(x, list) else xs[0]


def _cat(xs: list[Tensor]) -> Tensor:
    """Crops [B_i, N_i, D] -> all their tokens [sum B_i * N_i, D]."""
    return torch.cat([x.flatten(0, 1) for x in xs])


def _split(flat: Tensor, xs: list[Tensor]) -> list[Tensor]:
    """[sum B_i * N_i, D] -> one [B_i, N_i, D] per crop of `xs` (views)."""
    return [t.view(*x.shape[:2], -1) for t, x in zip(flat.split([x.shape[0] * x.shape[1] for x in xs]), xs)]
