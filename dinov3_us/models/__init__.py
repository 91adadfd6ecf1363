"""Backbone construction: architecture presets and `build_model_from_cfg` (student and teacher).

Model classes and architectures only: reading and writing weights files is `dinov3_us.weights`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from dinov3_us.models.vision_transformer import DinoVisionTransformer

logger = logging.getLogger("dinov3_us")

# name -> (embed_dim, depth, num_heads); vit_test is a test-size model for CPU runs.
ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_test": (64, 2, 2),
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}

# The settings of the official LVD-1689M release shared by every size (patch 16, 4 storage tokens, RoPE
# base 100 with separate coordinate normalisation and training rescale 2, LayerScale 1e-5, LayerNorm eps
# 1e-5, K-bias mask): the `dinov3_us.hub` builders, the eval's random baseline and what
# `dinov3_us.weights.arch.infer_arch` assumes for settings a state dict does not show.
RELEASED_KWARGS = dict(
    patch_size=16,
    n_storage_tokens=4,
    layerscale_init=1e-5,
    norm_layer="layernormbf16",
    mask_k_bias=True,
    qkv_bias=True,
    proj_bias=True,
    ffn_bias=True,
    ffn_layer="mlp",
    ffn_ratio=4.0,
    pos_embed_rope_base=100.0,
    pos_embed_rope_normalize_coords="separate",
    pos_embed_rope_rescale_coords=2.0,
    pos_embed_rope_dtype="fp32",
)


def vit_kwargs(student: Mapping, img_size: int = 224) -> dict:
    """`DinoVisionTransformer` keyword arguments from a config's `student` section."""
    if student["arch"] not in ARCHS:
        raise ValueError(f"student.arch={student['arch']!r} is not one of {sorted(ARCHS)}")
    embed_dim, depth, num_heads = ARCHS[student["arch"]]
    return dict(
        img_size=img_size,
        patch_size=student["patch_size"],
        in_chans=student["in_chans"],
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        ffn_ratio=student["ffn_ratio"],
        qkv_bias=student["qkv_bias"],
        proj_bias=student["proj_bias"],
        ffn_bias=student["ffn_bias"],
        layerscale_init=student["layerscale"],
        norm_layer=student["norm_layer"],
        ffn_layer=student["ffn_layer"],
        n_storage_tokens=student["n_storage_tokens"],
        mask_k_bias=student["mask_k_bias"],
        pos_embed_rope_base=student["pos_embed_rope_base"],
        pos_embed_rope_min_period=student["pos_embed_rope_min_period"],
        pos_embed_rope_max_period=student["pos_embed_rope_max_period"],
        pos_embed_rope_normalize_coords=student["pos_embed_rope_normalize_coords"],
        pos_embed_rope_shift_coords=student["pos_embed_rope_shift_coords"],
        pos_embed_rope_jitter_coords=student["pos_embed_rope_jitter_coords"],
        pos_embed_rope_rescale_coords=student["pos_embed_rope_rescale_coords"],
        pos_embed_rope_dtype=student["pos_embed_rope_dtype"],
    )


def build_model(
    student: Mapping, only_teacher: bool = False, img_size: int = 224, attention_backend: str = "auto", device=None
):
    """Build (student, teacher, embed_dim), or (teacher, embed_dim) with `only_teacher`, as the official function.

    The teacher has no stochastic depth. Weights are left uninitialised: call `init_weights()` (or
    load weights) after moving/sharding, as with meta-device construction.
    """
    kwargs = vit_kwargs(student, img_size) | {"attention_backend": attention_backend, "device": device}
    teacher = DinoVisionTransformer(**kwargs)
    if only_teacher:
        return teacher, teacher.embed_dim
    student_model = DinoVisionTransformer(**kwargs, drop_path_rate=student["drop_path_rate"])
    return student_model, teacher, student_model.embed_dim


def build_model_from_cfg(cfg: Mapping, only_teacher: bool = False):
    """`build_model` from a full run config (`student`, `crops.global_crops_size`, `attention.backend`)."""
    return build_model(
        cfg["student"],
        only_teacher=only_teacher,
        img_size=cfg["crops"]["global_crops_size"],
        attention_backend=cfg["attention"]["backend"],
    )


__all__ = [
    "ARCHS",
    "RELEASED_KWARGS",
    "DinoVisionTransformer",
    "build_model",
    "build_model_from_cfg",
    "vit_kwargs",
]
