"""Building blocks of the DINOv3 backbone and heads, under their official names."""

from dinov3_us.layers.attention import LinearKMaskedBias, SelfAttention
from dinov3_us.layers.block import SelfAttentionBlock
from dinov3_us.layers.ffn_layers import Mlp, SwiGLUFFN
from dinov3_us.layers.layer_scale import LayerScale
from dinov3_us.layers.patch_embed import PatchEmbed
from dinov3_us.layers.rms_norm import RMSNorm
from dinov3_us.layers.rope_position_encoding import RopePositionEmbedding

__all__ = [
    "LayerScale",
    "LinearKMaskedBias",
    "Mlp",
    "PatchEmbed",
    "RMSNorm",
    "RopePositionEmbedding",
    "SelfAttention",
    "SelfAttentionBlock",
    "SwiGLUFFN",
]
