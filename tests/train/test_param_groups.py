"""Parameter groups: which parameters get weight decay, layer-wise lr decay, patch-embed multiplier."""

import pytest
import torch

from dinov3_us.layers.dino_head import DINOHead
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.train.param_groups import apply_optim_scheduler, fuse_params_groups, get_params_groups_with_decay


@pytest.fixture(scope="module")
def backbone():
    return DinoVisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=3, num_heads=2, n_storage_tokens=2,
                                 layerscale_init=1e-5)


def test_no_decay_on_biases_norms_gammas_and_tokens(backbone):
    groups = {g["name"]: g for g in get_params_groups_with_decay(backbone, lr_decay_rate=0.9)}
    no_decay = {n for n, g in groups.items() if g["wd_multiplier"] == 0.0}
    for token in ("cls_token", "storage_tokens", "mask_token"):  # the official code decays these
        assert token in no_decay
    assert {"blocks.0.ls1.gamma", "blocks.0.norm1.weight", "norm.weight", "blocks.1.attn.qkv.bias"} <= no_decay
    assert {"blocks.0.attn.qkv.weight", "blocks.2.mlp.fc1.weight", "patch_embed.proj.weight"}.isdisjoint(no_decay)


def test_layerwise_decay_and_patch_embed_multiplier(backbone):
    groups = {g["name"]: g for g in get_params_groups_with_decay(backbone, lr_decay_rate=0.5, patch_embed_lr_mult=0.2)}
    assert groups["norm.weight"]["lr_multiplier"] == 1.0  # after the last block
    assert groups["blocks.2.mlp.fc1.weight"]["lr_multiplier"] == 0.5
    assert groups["blocks.0.mlp.fc1.weight"]["lr_multiplier"] == 0.5**3
    assert groups["cls_token"]["lr_multiplier"] == 0.5**4
    assert groups["patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.5**4 * 0.2)


def test_heads_last_layer_and_wd_multiplier():
    head = DINOHead(in_dim=64, out_dim=32, hidden_dim=48, bottleneck_dim=16, nlayers=3)
    groups = get_params_groups_with_decay(head, prefix="dino_head", lr_decay_rate=0.5, dino_head_wd_multiplier=0.3)
    last = [g for g in groups if g["is_last_layer"]]
    assert last and all("last_layer" in g["name"] for g in last)
    assert all(g["lr_multiplier"] == 1.0 for g in groups)
    weights = [g for g in groups if g["name"].endswith("weight") and "norm" not in g["name"]]
    assert weights and all(g["wd_multiplier"] == 0.3 for g in weights)


def test_fuse_and_apply(backbone):
    groups = fuse_params_groups(get_params_groups_with_decay(backbone, lr_decay_rate=0.9))
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len([p for p in backbone.parameters() if p.requires_grad]) and len(groups) < n_params
    opt = torch.optim.AdamW(groups)
    apply_optim_scheduler(opt, lr=1.0, wd=0.1, last_layer_lr=0.0)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(g["lr_multiplier"])
        assert g["weight_decay"] == pytest.approx(0.1 * g["wd_multiplier"])
