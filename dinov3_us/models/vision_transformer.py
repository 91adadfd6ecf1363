"""`DinoVisionTransformer`: the DINOv3 ViT backbone, official constructor arguments and state-dict keys."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from dinov3_us.dtypes import DTYPES
from dinov3_us.errors import CheckpointError
from dinov3_us.layers import (
    LayerScale,
    LinearKMaskedBias,
    Mlp,
    PatchEmbed,
    RMSNorm,
    RopePositionEmbedding,
    SelfAttention,
    SelfAttentionBlock,
    SwiGLUFFN,
)
from dinov3_us.layers.attention_backends import BACKENDS
from dinov3_us.layers.ffn_layers import SWIGLU_ALIGN, swiglu_hidden

logger = logging.getLogger("dinov3_us")

FFN_LAYERS = {"mlp": Mlp} | {name: partial(SwiGLUFFN, align_to=align) for name, align in SWIGLU_ALIGN.items()}
NORM_LAYERS = {  # the official names and epsilons
    "layernorm": partial(nn.LayerNorm, eps=1e-6),
    "layernormbf16": partial(nn.LayerNorm, eps=1e-5),
    "rmsnorm": RMSNorm,
}


def _choice(name: str, value: str, table: dict):
    if value not in table:
        raise ValueError(f"{name}={value!r} is not one of {sorted(table)}")
    return table[value]


def init_weights_vit(module: nn.Module) -> None:
    """Official initialisation of one module: trunc-normal(0.02) linears, zero biases, K-bias mask."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, LinearKMaskedBias) and module.bias is not None:
            module.reset_bias_mask()
    elif isinstance(module, (nn.LayerNorm, LayerScale, PatchEmbed, RMSNorm)):
        module.reset_parameters()


class DinoVisionTransformer(nn.Module):
    """ViT with CLS + storage (register) tokens, RoPE, LayerScale and a `mask_token` for iBOT.

    Keyword arguments and their meanings are those of the official DINOv3 class; an unknown keyword
    is an error (the official code only logs it).
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        pos_embed_rope_base: float | None = 100.0,
        pos_embed_rope_min_period: float | None = None,
        pos_embed_rope_max_period: float | None = None,
        pos_embed_rope_normalize_coords: Literal["min", "max", "separate"] = "separate",
        pos_embed_rope_shift_coords: float | None = None,
        pos_embed_rope_jitter_coords: float | None = None,
        pos_embed_rope_rescale_coords: float | None = None,
        pos_embed_rope_dtype: str = "bf16",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        ffn_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        layerscale_init: float | None = None,
        norm_layer: str = "layernorm",
        ffn_layer: str = "mlp",
        ffn_bias: bool = True,
        proj_bias: bool = True,
        n_storage_tokens: int = 0,
        mask_k_bias: bool = False,
        attention_backend: str = "auto",
        device=None,
    ) -> None:
        super().__init__()
        norm_layer_cls = _choice("norm_layer", norm_layer, NORM_LAYERS)
        ffn_layer_cls = _choice("ffn_layer", ffn_layer, FFN_LAYERS)
        self.num_features = self.embed_dim = embed_dim
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.n_storage_tokens = n_storage_tokens

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, flatten_embedding=False)
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim, device=device))
        if n_storage_tokens > 0:
            self.storage_tokens = nn.Parameter(torch.empty(1, n_storage_tokens, embed_dim, device=device))
        self.rope_embed = RopePositionEmbedding(
            embed_dim,
            num_heads=num_heads,
            base=pos_embed_rope_base,
            min_period=pos_embed_rope_min_period,
            max_period=pos_embed_rope_max_period,
            normalize_coords=pos_embed_rope_normalize_coords,
            shift_coords=pos_embed_rope_shift_coords,
            jitter_coords=pos_embed_rope_jitter_coords,
            rescale_coords=pos_embed_rope_rescale_coords,
            dtype=_choice("pos_embed_rope_dtype", pos_embed_rope_dtype, DTYPES),
            device=device,
        )
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(
                dim=embed_dim,
                num_heads=num_heads,
                ffn_ratio=ffn_ratio,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                drop_path=drop_path_rate,
                norm_layer=norm_layer_cls,
                act_layer=nn.GELU,
                ffn_layer=ffn_layer_cls,
                init_values=layerscale_init,
                mask_k_bias=mask_k_bias,
                device=device,
            )
            for _ in range(depth)
        )
        self.norm = norm_layer_cls(embed_dim)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.empty(1, embed_dim, device=device))
        self.set_attention_backend(attention_backend)

    def set_attention_backend(self, backend: str) -> None:
        """Select the attention kernel of every block: auto | sdpa | xformers | matmul."""
        if backend not in BACKENDS:
            raise ValueError(f"attention backend {backend!r} is not one of {list(BACKENDS)}")
        for module in self.modules():
            if isinstance(module, SelfAttention):
                module.backend = backend

    def init_weights(self) -> None:
        """Official initialisation of every parameter and buffer."""
        self.rope_embed._init_weights()
        nn.init.normal_(self.cls_token, std=0.02)
        if self.n_storage_tokens > 0:
            nn.init.normal_(self.storage_tokens, std=0.02)
        nn.init.zeros_(self.mask_token)
        self.apply(init_weights_vit)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        """[B, C, H, W] (+ bool masks [B, HW]) -> tokens [B, 1 + n_storage + HW, D] and the patch grid (H, W)."""
        x = self.patch_embed(x)  # [B, H, W, D]
        B, H, W, _ = x.shape
        x = x.flatten(1, 2)  # [B, HW, D]
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
            cls_token = self.cls_token
        else:
            cls_token = self.cls_token + 0 * self.mask_token  # keeps mask_token in the autograd graph
        prefix = [cls_token.expand(B, -1, -1)]
        if self.n_storage_tokens > 0:
            prefix.append(self.storage_tokens.expand(B, -1, -1))
        return torch.cat([*prefix, x], dim=1), (H, W)

    def _split_norm(self, x: Tensor, masks: Tensor | None) -> dict[str, Tensor]:
        x_norm = self.norm(x)  # [B, N, D]
        n_prefix = self.n_storage_tokens + 1
        return {
            "x_norm_clstoken": x_norm[:, 0],  # [B, D]
            "x_storage_tokens": x_norm[:, 1:n_prefix],  # [B, n_storage, D]
            "x_norm_patchtokens": x_norm[:, n_prefix:],  # [B, HW, D]
            "x_prenorm": x,  # [B, N, D]
            "masks": masks,
        }

    def forward_features_list(self, x_list: list[Tensor], masks_list: list[Tensor | None]) -> list[dict[str, Tensor]]:
        """Run crops of different sizes (e.g. global and local) through the blocks in one pass."""
        if len(x_list) != len(masks_list):
            raise ValueError(f"got {len(x_list)} inputs but {len(masks_list)} masks")
        tokens, grids = zip(*(self.prepare_tokens_with_masks(x, m) for x, m in zip(x_list, masks_list)))
        tokens = list(tokens)
        for blk in self.blocks:
            ropes = [self.rope_embed(H=H, W=W) for H, W in grids]  # fresh coordinate augmentation per block
            tokens = blk(tokens, ropes)
        return [self._split_norm(x, m) for x, m in zip(tokens, masks_list)]

    def forward_features(
        self, x: Tensor | list[Tensor], masks: Tensor | list[Tensor | None] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Features of one batch (a dict) or of a list of batches (a list of dicts)."""
        if isinstance(x, Tensor):
            return self.forward_features_list([x], [masks])[0]
        return self.forward_features_list(x, masks if masks is not None else [None] * len(x))

    def _get_intermediate_layers_not_chunked(self, x: Tensor, n: int | Sequence[int] = 1) -> list[Tensor]:
        x, (H, W) = self.prepare_tokens_with_masks(x)
        total = len(self.blocks)
        take = set(range(total - n, total)) if isinstance(n, int) else set(n)
        if not take or min(take) < 0 or max(take) >= total:
            raise ValueError(f"n={n!r} must select blocks of a {total}-block backbone")
        output = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, self.rope_embed(H=H, W=W))
            if i in take:
                output.append(x)
        return output

    def get_intermediate_layers(
        self,
        x: Tensor,
        *,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last `n` blocks (or of the blocks listed in `n`), as the official method.

        Each element is the patch tokens [B, HW, D] (or [B, D, h, w] with `reshape`), followed by the
        class token [B, D] and/or the storage tokens [B, n_storage, D] when asked for.
        """
        outputs = self._get_intermediate_layers_not_chunked(x, n)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        n_prefix = self.n_storage_tokens + 1
        class_tokens = [out[:, 0] for out in outputs]
        extra_tokens = [out[:, 1:n_prefix] for out in outputs]
        outputs = [out[:, n_prefix:] for out in outputs]
        if reshape:
            B, _, h, w = x.shape
            grid = (h // self.patch_size, w // self.patch_size)
            outputs = [out.reshape(B, *grid, -1).permute(0, 3, 1, 2).contiguous() for out in outputs]
        parts = [outputs]
        if return_class_token:
            parts.append(class_tokens)
        if return_extra_tokens:
            parts.append(extra_tokens)
        return tuple(outputs) if len(parts) == 1 else tuple(zip(*parts))

    def forward(self, *args, is_training: bool = False, **kwargs):
        """Features dict(s) when `is_training`, else `head(x_norm_clstoken)` [B, D]."""
        ret = self.forward_features(*args, **kwargs)
        return ret if is_training else self.head(ret["x_norm_clstoken"])


def complete_arch(arch: Mapping) -> dict:
    """`arch` (DinoVisionTransformer kwargs, as in an export's JSON) completed with the constructor's defaults.

    Raises:
        CheckpointError: `arch` has keys the constructor does not take.
    """
    params = inspect.signature(DinoVisionTransformer.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ("self", "attention_backend", "device")}
    unknown = sorted(set(arch) - set(defaults))
    if unknown:
        raise CheckpointError(f"arch has keys that are not DinoVisionTransformer arguments: {unknown}")
    return defaults | dict(arch)


def ffn_hidden_features(arch: Mapping) -> int:
    """The FFN hidden width of a block of `DinoVisionTransformer(**arch)` (SwiGLU: its aligned 2/3)."""
    hidden = int(arch["embed_dim"] * arch["ffn_ratio"])
    return hidden if arch["ffn_layer"] == "mlp" else swiglu_hidden(hidden, SWIGLU_ALIGN[arch["ffn_layer"]])
