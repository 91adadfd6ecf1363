"""Builders of the released DINOv3 backbones: `dinov3_vits16`, `dinov3_vitb16`, `dinov3_vitl16`.

The architectures are those of the official LVD-1689M release (patch 16, 4 storage tokens, RoPE base
100 with separate coordinate normalisation and training rescale 2, LayerScale 1e-5, LayerNorm eps
1e-5, K-bias mask). Nothing is downloaded implicitly: pass `weights=` a local `.pth`/`.safetensors`
file (or an explicit URL) of official or dinov3_us-converted weights, or an HF / timm export
(`dinov3_us.weights`); they load with `strict=True`.
With `in_chans=1`, the RGB patch filters are summed into one grayscale channel.
"""

from __future__ import annotations

import os

from dinov3_us.errors import CheckpointError
from dinov3_us.models import ARCHS, RELEASED_KWARGS
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.weights.load import load_backbone_weights

__all__ = ["RELEASED_KWARGS", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vits16"]


def _make(arch: str, pretrained: bool, weights: str | os.PathLike | None, **kwargs) -> DinoVisionTransformer:
    embed_dim, depth, num_heads = ARCHS[arch]
    model = DinoVisionTransformer(
        **(RELEASED_KWARGS | dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads) | kwargs)
    )
    model.init_weights()
    if weights is not None:
        load_backbone_weights(model, weights)
    elif pretrained:
        raise CheckpointError(
            f"{arch}: pretrained=True needs weights=<path or URL of the official .pth> "
            "(dinov3_us downloads nothing implicitly; the official weights are distributed by Meta on request)"
        )
    return model


def dinov3_vits16(*, pretrained: bool = False, weights: str | os.PathLike | None = None, **kwargs):
    """ViT-S/16 (384 dim, 12 blocks, 6 heads), optionally with official or converted weights."""
    return _make("vit_small", pretrained, weights, **kwargs)


def dinov3_vitb16(*, pretrained: bool = False, weights: str | os.PathLike | None = None, **kwargs):
    """ViT-B/16 (768 dim, 12 blocks, 12 heads), optionally with official or converted weights."""
    return _make("vit_base", pretrained, weights, **kwargs)


def dinov3_vitl16(*, pretrained: bool = False, weights: str | os.PathLike | None = None, **kwargs):
    """ViT-L/16 (1024 dim, 24 blocks, 16 heads), optionally with official or converted weights."""
    return _make("vit_large", pretrained, weights, **kwargs)
