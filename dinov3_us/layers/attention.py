"""Multi-head self-attention with RoPE on patch tokens and the optional K-bias mask of DINOv3."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov3_us.layers.attention_backends import scaled_dot_product_attention


def rope_rotate_half(x: Tensor) -> Tensor:
    """[x0 .. x_{n-1}, x_n .. x_{2n-1}] -> [-x_n .. -x_{2n-1}, x0 .. x_{n-1}]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_apply(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate `x` [..., D] by the angles whose sin/cos are given ([..., D], halves repeated)."""
    return x * cos + rope_rotate_half(x) * sin


class LinearKMaskedBias(nn.Linear):
    """The qkv projection whose K part has no bias: `bias * bias_mask`, mask 1 for Q and V, 0 for K.

    `bias_mask` is a buffer, as in the official checkpoints (`attn.qkv.bias_mask`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.out_features % 3 != 0:
            raise ValueError(f"LinearKMaskedBias needs out_features divisible by 3, got {self.out_features}")
        if self.bias is not None:
            self.register_buffer("bias_mask", torch.ones_like(self.bias))
            self.reset_bias_mask()

    def reset_bias_mask(self) -> None:
        """1 for the Q and V thirds of the output, 0 for the K third."""
        o = self.out_features
        self.bias_mask.fill_(1)
        self.bias_mask[o // 3 : 2 * o // 3].fill_(0)

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.bias_mask.to(self.bias.dtype) if self.bias is not None else None
        return F.linear(x, self.weight, bias)


class SelfAttention(nn.Module):
    """qkv projection -> RoPE on patch tokens (prefix tokens untouched) -> attention -> proj."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        mask_k_bias: bool = False,
        device=None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        linear_class = LinearKMaskedBias if mask_k_bias else nn.Linear
        self.qkv = linear_class(dim, dim * 3, bias=qkv_bias, device=device)
        self.attn_drop = nn.Dropout(attn_drop)  # kept for the official signature; the kernels run without dropout
        self.proj = nn.Linear(dim, dim, bias=proj_bias, device=device)
        self.proj_drop = nn.Dropout(proj_drop)
        self.backend = "auto"  # set by DinoVisionTransformer.set_attention_backend

    @staticmethod
    def apply_rope(q: Tensor, k: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Rotate the last H*W tokens of q and k [B, heads, N, D_head] in the dtype of the RoPE tables."""
        sin, cos = rope  # [HW, D_head]
        prefix = q.shape[-2] - sin.shape[-2]  # CLS + storage tokens
        out = []
        for t in (q, k):
            rotated = rope_apply(t[:, :, prefix:, :].to(sin.dtype), sin, cos)  # [B, heads, HW, D_head]
            out.append(torch.cat((t[:, :, :prefix, :], rotated.to(t.dtype)), dim=-2))
        return out[0], out[1]

    def _attend(self, qkv: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """qkv [B, N, 3 * D] -> RoPE -> attention -> [B, N, D] (before the output projection)."""
        B, N, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)  # each [B, N, heads, D_head]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, N, D_head]
        if rope is not None:
            q, k = self.apply_rope(q, k, rope)
        x = scaled_dot_product_attention(q, k, v, backend=self.backend)  # [B, heads, N, D_head]
        return x.transpose(1, 2).reshape(B, N, C)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """[B, N, D] -> [B, N, D]."""
        return self.proj_drop(self.proj(self._attend(self.qkv(x), rope)))

    def forward_flat(self, x: Tensor, shapes: list[tuple[int, int]],
                     ropes: list[tuple[Tensor, Tensor] | None]) -> Tensor:
        """Tokens of crops of different sizes, concatenated: [sum B_i * N_i, D] -> [sum B_i * N_i, D].

        `shapes` are the crops' (B_i, N_i). One qkv and one output projection over all tokens, attention
        per crop size: the result of `forward` on each crop, in fewer and larger matmuls.
        """
        qkv = self.qkv(x).split([b * n for b, n in shapes])  # [B_i * N_i, 3 * D] each
        attended = [self._attend(t.view(b, n, -1), r).flatten(0, 1) for t, (b, n), r in zip(qkv, shapes, ropes)]
        return self.proj_drop(self.proj(torch.cat(attended)))  # [sum B_i * N_i, D]
