"""The architecture of a backbone state dict: inferred from its keys and shapes, checked against a named size.

Used when a weights file carries no architecture (an official release `.pth` without a `<stem>.json`);
files with a sidecar, an HF `config.json` or a timm sidecar take the architecture from there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from dinov3_us.dtypes import DTYPE_NAMES
from dinov3_us.errors import CheckpointError, ConfigError
from dinov3_us.models import ARCHS, RELEASED_KWARGS

# embed_dim -> num_heads of the known sizes (used when the state dict has no RoPE periods to read it from).
HEADS_BY_DIM = {64: 2, 192: 3, 384: 6, 768: 12, 1024: 16, 1280: 20, 1536: 24, 4096: 32}


def _ffn(state: Mapping[str, torch.Tensor], embed_dim: int) -> tuple[str, float]:
    """(ffn_layer, ffn_ratio) from block 0's FFN weights."""
    if "blocks.0.mlp.fc1.weight" in state:
        return "mlp", state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    if "blocks.0.mlp.w1.weight" in state:
        hidden = state["blocks.0.mlp.w1.weight"].shape[0]
        for layer, align in (("swiglu", 8), ("swiglu32", 32), ("swiglu64", 64), ("swiglu128", 128)):
            for ratio in (4.0, 3.0, 2.0, 8 / 3, 5.3375, 1.0):
                d = int(embed_dim * ratio * 2 / 3)
                if d + (-d % align) == hidden:
                    return layer, ratio
        raise CheckpointError(f"cannot infer the SwiGLU ratio of a hidden size {hidden} at embed_dim {embed_dim}")
    raise CheckpointError("cannot infer the FFN type: no blocks.0.mlp.fc1 / blocks.0.mlp.w1 weights")


def infer_arch(state: Mapping[str, torch.Tensor]) -> dict:
    """`DinoVisionTransformer` kwargs from an official-format backbone state dict's keys and shapes.

    embed_dim from `cls_token`, depth from the `blocks.i` count, heads from the RoPE periods (head
    dim = 4 x periods) or `HEADS_BY_DIM`, patch size and channels from the patch embedding, storage
    tokens, K-bias mask (`bias_mask` buffers), FFN type, norm type, biases and LayerScale presence.
    Unobservable settings take the released backbones' values (LayerNorm eps 1e-5, RoPE base 100).
    """
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        raise CheckpointError(
            f"cannot infer a DINOv3 backbone architecture: no cls_token / patch_embed.proj.weight among "
            f"{len(state)} keys (first: {sorted(state)[:5]})"
        )
    embed_dim = int(state["cls_token"].shape[-1])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks or blocks != set(range(max(blocks) + 1)):
        raise CheckpointError(f"cannot infer the depth: block indices {sorted(blocks)} are not 0..n-1")
    periods = state.get("rope_embed.periods")
    if periods is not None and periods.numel() > 0 and embed_dim % (4 * periods.numel()) == 0:
        num_heads = embed_dim // (4 * periods.numel())
    elif embed_dim in HEADS_BY_DIM:
        num_heads = HEADS_BY_DIM[embed_dim]
    else:
        raise CheckpointError(f"cannot infer the number of heads of embed_dim {embed_dim}")
    patch = state["patch_embed.proj.weight"]  # [D, C, p, p]
    ffn_layer, ffn_ratio = _ffn(state, embed_dim)
    storage = state.get("storage_tokens")
    return RELEASED_KWARGS | dict(
        patch_size=int(patch.shape[-1]),
        in_chans=int(patch.shape[1]),
        embed_dim=embed_dim,
        depth=max(blocks) + 1,
        num_heads=num_heads,
        ffn_layer=ffn_layer,
        ffn_ratio=ffn_ratio,
        n_storage_tokens=0 if storage is None else int(storage.shape[1]),
        mask_k_bias="blocks.0.attn.qkv.bias_mask" in state,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        proj_bias="blocks.0.attn.proj.bias" in state,
        ffn_bias=any(k.startswith("blocks.0.mlp.") and k.endswith(".bias") for k in state),
        layerscale_init=1e-5 if "blocks.0.ls1.gamma" in state else None,
        norm_layer="layernormbf16" if "norm.bias" in state else "rmsnorm",
        pos_embed_rope_dtype=DTYPE_NAMES.get(periods.dtype, "fp32") if periods is not None else "fp32",
    )


def check_named_arch(arch_name: str | None, kwargs: dict, where: str) -> None:
    """Raise unless the backbone `kwargs` (read from `where`) has the size of `ARCHS[arch_name]` (None: no check)."""
    if arch_name is None:
        return
    if arch_name not in ARCHS:
        raise ConfigError(f"model.arch={arch_name!r} is not one of {sorted(ARCHS)}")
    want = ARCHS[arch_name]
    have = (kwargs["embed_dim"], kwargs["depth"], kwargs["num_heads"])
    if want != have:
        raise CheckpointError(
            f"{where} holds a backbone of (embed_dim, depth, heads) = {have}, but --arch {arch_name} is {want}"
        )
