"""RoPE, K-masked qkv bias, LayerScale, PatchEmbed, RMSNorm, stochastic depth."""

import math

import pytest
import torch

from dinov3_us.layers import LayerScale, LinearKMaskedBias, PatchEmbed, RMSNorm, RopePositionEmbedding
from dinov3_us.layers.attention import rope_apply
from dinov3_us.layers.block import SelfAttentionBlock
from dinov3_us.layers.patch_embed import rgb_to_gray_patch_weight


def test_rope_periods_and_tables():
    rope = RopePositionEmbedding(64, num_heads=2, base=100.0, dtype=torch.float32)
    assert rope.periods.shape == (8,)
    torch.testing.assert_close(rope.periods, 100.0 ** (torch.arange(8) / 8))
    sin, cos = rope(H=3, W=5)
    assert sin.shape == (15, 32)
    torch.testing.assert_close(sin**2 + cos**2, torch.ones(15, 32))
    by_period = RopePositionEmbedding(64, num_heads=2, base=None, min_period=0.5, max_period=10.0)
    assert by_period.periods[0].item() == pytest.approx(0.5) and by_period.periods[-1].item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="either `base`"):
        RopePositionEmbedding(64, num_heads=2, base=100.0, min_period=0.5, max_period=10.0)


def test_rope_is_relative():
    """Rotated q.k depends only on the offset between positions: shift both, same dot product."""
    rope = RopePositionEmbedding(8, num_heads=1, base=100.0, normalize_coords="max", dtype=torch.float64)
    sin, cos = rope(H=1, W=6)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    dots = [(rope_apply(q, sin[i], cos[i]) * rope_apply(k, sin[i + 2], cos[i + 2])).sum() for i in range(4)]
    for d in dots[1:]:
        assert d.item() == pytest.approx(dots[0].item(), rel=1e-9)


def test_rope_augmentations_only_in_training():
    rope = RopePositionEmbedding(64, num_heads=2, shift_coords=0.5, jitter_coords=2.0, rescale_coords=2.0)
    rope.eval()
    torch.testing.assert_close(rope(H=4, W=4), rope(H=4, W=4))
    rope.train()
    assert not torch.allclose(rope(H=4, W=4)[0], rope(H=4, W=4)[0])


def test_k_bias_is_masked():
    lin = LinearKMaskedBias(4, 12, bias=True)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(1.0)
    out = lin(torch.zeros(1, 4))[0]
    assert out[:4].eq(1).all() and out[4:8].eq(0).all() and out[8:].eq(1).all()
    with pytest.raises(ValueError, match="divisible by 3"):
        LinearKMaskedBias(4, 10)


def test_layerscale_patchembed_rmsnorm():
    ls = LayerScale(6, init_values=0.1)
    torch.testing.assert_close(ls(torch.ones(2, 6)), torch.full((2, 6), 0.1))
    pe = PatchEmbed(img_size=32, patch_size=8, in_chans=1, embed_dim=16, flatten_embedding=False)
    assert pe(torch.randn(2, 1, 32, 24)).shape == (2, 4, 3, 16)
    x = torch.randn(3, 10) * 7
    out = RMSNorm(10)(x)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(3), atol=1e-4, rtol=0)
    w = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(rgb_to_gray_patch_weight(w), w.sum(1, keepdim=True))
    with pytest.raises(ValueError, match=r"\[D, 3, p, p\]"):
        rgb_to_gray_patch_weight(torch.randn(4, 1, 2, 2))


def test_stochastic_depth_subset_scaling():
    """In training with drop_path, dropped samples pass through unchanged; kept ones get B/keep times the branch."""
    torch.manual_seed(0)
    block = SelfAttentionBlock(dim=8, num_heads=2, drop_path=0.5, init_values=1.0).train()
    x = torch.randn(4, 5, 8)
    added = block._residual([x], lambda ts, ropes: [torch.ones_like(t) for t in ts], [None])[0] - x  # [4, 5, 8]
    per_sample = added.mean(dim=(1, 2))
    assert sorted(per_sample.tolist()) == pytest.approx([0.0, 0.0, 2.0, 2.0])  # 2 kept, scaled by 4 / 2
    block.eval()
    with torch.no_grad():
        ref = x + block.ls1(block.attn(block.norm1(x)))
        ref = ref + block.ls2(block.mlp(block.norm2(ref)))
        torch.testing.assert_close(block(x), ref)
    assert math.isclose(block.sample_drop_ratio, 0.5)


def test_crops_of_different_sizes_together_equal_each_alone():
    """A list of crops runs its linear layers over all tokens at once: the same outputs and gradients as one by one."""
    torch.manual_seed(0)
    block = SelfAttentionBlock(dim=16, num_heads=2, init_values=0.5).train()
    crops = [torch.randn(3, 9, 16, requires_grad=True), torch.randn(5, 4, 16, requires_grad=True)]
    together = block(crops)
    alone = [block(c) for c in crops]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    g_together = torch.autograd.grad(sum((t * t).sum() for t in together), [*crops, block.attn.qkv.weight])
    g_alone = torch.autograd.grad(sum((t * t).sum() for t in alone), [*crops, block.attn.qkv.weight])
    for a, b in zip(g_together, g_alone):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(7, 16), (2, 5, 16)])
def test_mlp_recomputing_gelu_gives_the_unfused_values_and_gradients(shape):
    from dinov3_us.layers import Mlp

    torch.manual_seed(0)
    mlp = Mlp(16, 48)
    x = torch.randn(shape, requires_grad=True)
    fused = mlp(x)
    grads = torch.autograd.grad(fused.square().sum(), [x, *mlp.parameters()])
    reference = mlp.fc2(mlp.act(mlp.fc1(x)))  # the plain layers, autograd's own backward
    ref_grads = torch.autograd.grad(reference.square().sum(), [x, *mlp.parameters()])
    torch.testing.assert_close(fused, reference, rtol=0, atol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
