"""DinoVisionTransformer: parity with the official outputs, keys, lists of crops, masks, 1-channel input."""

import json

import pytest
import torch

from dinov3_us.hub import dinov3_vitb16, dinov3_vits16
from dinov3_us.models import build_model_from_cfg
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.weights import load_backbone_weights

TINY = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, n_storage_tokens=4, ffn_ratio=4,
            layerscale_init=1e-5, mask_k_bias=True, qkv_bias=True, norm_layer="layernormbf16",
            pos_embed_rope_dtype="fp32")


def tiny(**kwargs):
    model = DinoVisionTransformer(**(TINY | kwargs))
    model.init_weights()
    return model


@pytest.fixture(scope="module")
def parity(fixtures_dir):
    return torch.load(fixtures_dir / "dinov3_tiny_parity.pt", weights_only=True)


def test_official_tiny_backbone_parity(parity):
    cfg = parity["config"]
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["n_storage_tokens"]) == (64, 2, 2, 4)
    assert cfg["norm"] == "layernorm eps 1e-5"  # the official "layernormbf16"
    model = DinoVisionTransformer(**TINY)
    load_backbone_weights(model, parity["state_dict"])  # strict
    model.eval()
    with torch.no_grad():
        out = model.forward_features(parity["input"])
        inter = model.get_intermediate_layers(parity["input"], n=cfg["depth"], return_class_token=True, norm=True)
    for key in ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens", "x_prenorm"):
        torch.testing.assert_close(out[key], parity[key], atol=1e-5, rtol=0, msg=key)
    for i, (patch, cls) in enumerate(inter):
        torch.testing.assert_close(patch, parity["intermediate_patch"][i], atol=1e-5, rtol=0)
        torch.testing.assert_close(cls, parity["intermediate_cls"][i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, builder", [("dinov3_vits16", dinov3_vits16), ("dinov3_vitb16", dinov3_vitb16)])
def test_hub_state_dict_matches_official_keys_and_shapes(fixtures_dir, name, builder):
    ref = json.loads((fixtures_dir / "dinov3_official_state_dict_shapes.json").read_text())[name]
    ours = {k: list(v.shape) for k, v in builder(pretrained=False).state_dict().items()}
    assert set(ours) == set(ref), (set(ours) ^ set(ref))
    assert ours == ref


def test_list_of_crops_equals_separate_calls():
    model = tiny().eval()
    g, loc = torch.randn(2, 3, 64, 64), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        both = model.forward_features([g, loc], [None, None])
        alone = [model.forward_features(g), model.forward_features(loc)]
    for a, b in zip(both, alone):
        torch.testing.assert_close(a["x_norm_patchtokens"], b["x_norm_patchtokens"])
    assert both[1]["x_norm_patchtokens"].shape == (3, 4, 64)  # 32 px / 16 -> 2 x 2 patches


def test_masks_replace_patch_tokens_with_mask_token():
    model = tiny().eval()
    with torch.no_grad():
        model.mask_token.normal_()
        x = torch.randn(2, 3, 64, 64)
        masks = torch.zeros(2, 16, dtype=torch.bool)
        masks[0, :8] = True
        tokens, grid = model.prepare_tokens_with_masks(x, masks)
        assert grid == (4, 4) and tokens.shape == (2, 1 + 4 + 16, 64)
        torch.testing.assert_close(tokens[0, 5:13], model.mask_token.expand(8, -1))
        unmasked, _ = model.prepare_tokens_with_masks(x)
        torch.testing.assert_close(tokens[1], unmasked[1])
        assert model.forward_features(x, masks)["masks"] is masks


def test_get_intermediate_layers_options():
    model = tiny(depth=3).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        maps = model.get_intermediate_layers(x, n=2, reshape=True)
        chosen = model.get_intermediate_layers(x, n=[0, 2], return_class_token=True, return_extra_tokens=True)
    assert len(maps) == 2 and maps[0].shape == (2, 64, 4, 3)
    patch, cls, extra = chosen[1]
    assert patch.shape == (2, 12, 64) and cls.shape == (2, 64) and extra.shape == (2, 4, 64)
    with pytest.raises(ValueError, match="must select blocks"):
        model.get_intermediate_layers(x, n=[5])


def test_grayscale_patch_embedding_from_rgb_weights():
    rgb = tiny().eval()
    gray = DinoVisionTransformer(**(TINY | {"in_chans": 1})).eval()
    load_backbone_weights(gray, rgb.state_dict())  # RGB filters summed into one channel
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-5)


def test_drop_path_and_rope_augmentation_only_in_training():
    model = tiny(drop_path_rate=0.5, pos_embed_rope_rescale_coords=2.0)
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
    assert not torch.allclose(a, b)


def test_training_forward_has_gradients_for_every_parameter():
    model = tiny(drop_path_rate=0.1).train()
    out = model.forward_features([torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)], [None, None])
    loss = sum(o["x_norm_clstoken"].sum() + o["x_norm_patchtokens"].sum() for o in out)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == [], no_grad  # mask_token included, through the 0 * mask_token term


@pytest.mark.parametrize("ffn_layer, norm_layer", [("swiglu64", "rmsnorm"), ("swiglu", "layernorm")])
def test_other_ffn_and_norm_layers(ffn_layer, norm_layer):
    model = tiny(ffn_layer=ffn_layer, norm_layer=norm_layer).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 64)


def test_bad_inputs_are_clear_errors():
    model = tiny().eval()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match="expects 3 input channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="ffn_layer"):
        DinoVisionTransformer(**(TINY | {"ffn_layer": "gelu"}))
    with pytest.raises(TypeError):
        DinoVisionTransformer(**(TINY | {"unknown_option": 1}))


def test_build_model_from_cfg_uses_the_config():
    from dinov3_us.configs import load_config

    cfg = load_config(overrides=["student.arch=vit_test", "student.in_chans=1", "student.n_storage_tokens=2",
                                 "crops.global_crops_size=32", "student.drop_path_rate=0.2"])
    student, teacher, dim = build_model_from_cfg(cfg)
    assert dim == 64 and student.in_chans == 1 and student.n_storage_tokens == 2
    assert student.blocks[0].sample_drop_ratio == 0.2 and teacher.blocks[0].sample_drop_ratio == 0.0
    assert set(student.state_dict()) == set(teacher.state_dict())
