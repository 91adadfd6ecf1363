"""Hugging Face transformers interop: exported backbones give the same features in `DINOv3ViTModel`, exactly round-trip,
and what transformers cannot express is refused by name."""

import json

import pytest
import torch

from dinov3_us.errors import CheckpointError
from dinov3_us.hub import RELEASED_KWARGS
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.weights.hf import (
    arch_from_hf_config,
    export_hf,
    from_hf_state_dict,
    hf_config,
    import_hf,
    is_hf,
    to_hf_state_dict,
)

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install -e '.[test]' or '.[interop]')"
)

TINY = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, n_storage_tokens=4, ffn_ratio=4,
            layerscale_init=1e-5, mask_k_bias=True, qkv_bias=True, norm_layer="layernormbf16",
            pos_embed_rope_dtype="fp32")
VITS16 = RELEASED_KWARGS | dict(embed_dim=384, depth=12, num_heads=6)
VITB16 = RELEASED_KWARGS | dict(embed_dim=768, depth=12, num_heads=12)
SIZES = [(224, 224), (160, 224)]


def defaults():
    kw = dict(DinoVisionTransformer.__init__.__kwdefaults__)
    for k in ("attention_backend", "device", "drop_path_rate"):
        kw.pop(k)
    return kw


def random_weights(arch, seed=0):
    """Random weights at a scale where every block matters (LayerScale ~ 0.5, not 1e-5); raw masked K bias kept."""
    model = DinoVisionTransformer(**arch)
    model.init_weights()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.25)
            elif name.startswith("norm") or ".norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.ndim > 1 else 0.1))
    return model.state_dict()


def our_features(arch, sd, x):
    model = DinoVisionTransformer(**arch)
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        return model.eval().forward_features(x)


def hf_features(folder, x):
    model, info = transformers.AutoModel.from_pretrained(str(folder), output_loading_info=True)
    assert type(model).__name__ == "DINOv3ViTModel"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        return model.eval()(pixel_values=x)


def max_diffs(arch, sd, folder, x):
    ours, theirs = our_features(arch, sd, x), hf_features(folder, x)
    n_prefix = 1 + arch["n_storage_tokens"]
    torch.testing.assert_close(theirs.pooler_output, theirs.last_hidden_state[:, 0], rtol=0, atol=0)
    return ((ours["x_norm_clstoken"] - theirs.pooler_output).abs().max().item(),
            (ours["x_norm_patchtokens"] - theirs.last_hidden_state[:, n_prefix:]).abs().max().item())


@pytest.fixture(scope="module")
def parity(fixtures_dir):
    return torch.load(fixtures_dir / "dinov3_tiny_parity.pt", weights_only=True)


@pytest.mark.slow
def test_tiny_parity_weights_same_features_in_transformers(parity, tmp_path):
    sd = parity["state_dict"]
    folder = export_hf(sd, TINY, tmp_path / "hf")
    inputs = [torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h)) for h, w in SIZES]
    for x in [parity["input"], *inputs]:
        cls_diff, patch_diff = max_diffs(TINY, sd, folder, x)
        print(f"tiny {tuple(x.shape[-2:])}: cls {cls_diff:.2e} patch {patch_diff:.2e}")
        assert cls_diff <= 1e-4 and patch_diff <= 1e-4
    # the official recorded outputs, through transformers
    theirs = hf_features(folder, parity["input"])
    torch.testing.assert_close(theirs.pooler_output, parity["x_norm_clstoken"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, arch", [("vits16", VITS16), ("vitb16", VITB16)])
@pytest.mark.slow
def test_released_shapes_same_features_in_transformers(name, arch, tmp_path):
    sd = random_weights(arch)
    folder = export_hf(sd, arch, tmp_path / name)
    for h, w in SIZES:
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        cls_diff, patch_diff = max_diffs(arch, sd, folder, x)
        print(f"{name} {h}x{w}: cls {cls_diff:.2e} patch {patch_diff:.2e}")
        assert cls_diff <= 1e-4 and patch_diff <= 1e-4


VARIANTS = {
    "swiglu64_no_layerscale": dict(ffn_layer="swiglu64", layerscale_init=None),
    "swiglu_ratio3": dict(ffn_layer="swiglu", ffn_ratio=3.0),
    "no_registers_layernorm_1e-6": dict(n_storage_tokens=0, norm_layer="layernorm"),
    "unmasked_k_bias": dict(mask_k_bias=False),
    "no_biases": dict(qkv_bias=False, proj_bias=False, ffn_bias=False),
    "one_channel_rope_base_50": dict(in_chans=1, pos_embed_rope_base=50.0),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_same_features_and_exact_round_trip(variant, tmp_path):
    arch = defaults() | TINY | VARIANTS[variant]
    sd = random_weights(arch)
    if arch["qkv_bias"] and arch["mask_k_bias"]:
        for k in sd:  # a masked K bias is never used; transformers has none, so it comes back as zeros
            if k.endswith("qkv.bias"):
                sd[k][arch["embed_dim"]: 2 * arch["embed_dim"]] = 0
    folder = export_hf(sd, arch, tmp_path / variant, meta={"in_chans": arch["in_chans"]})
    x = torch.randn(2, arch["in_chans"], 160, 224)
    assert max(max_diffs(arch, sd, folder, x)) <= 1e-4
    back, back_arch = import_hf(folder)
    assert back_arch == defaults() | arch
    DinoVisionTransformer(**back_arch).load_state_dict(back, strict=True)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.slow
def test_round_trip_is_exact(tmp_path):
    arch = VITS16 | {"in_chans": 1}
    sd = random_weights(arch)
    for k in sd:  # a masked K bias is never used; it comes back as zeros
        if k.endswith("qkv.bias"):
            sd[k][384:768] = 0
    meta = {"image_mean": [0.2], "image_std": [0.3], "in_chans": 1, "data": "HC18 + FETAL_PLANES_DB",
            "recipe": "configs/train/small_cpu.yaml", "iterations": 1200,
            "results": {"fetal_planes linear": {"accuracy": 0.8123, "balanced_accuracy": 0.7}, "hc18 knn": 0.5}}
    folder = export_hf(sd, arch, tmp_path / "hf", meta=meta)
    back, back_arch = import_hf(folder)
    assert set(back) == set(sd)
    assert [k for k in sd if not torch.equal(back[k], sd[k]) or back[k].dtype != sd[k].dtype] == []
    assert back_arch == defaults() | arch
    # the .safetensors file (config.json beside it) and is_hf
    assert is_hf(folder) and is_hf(folder / "model.safetensors") and not is_hf(tmp_path)
    back2, _ = import_hf(folder / "model.safetensors")
    assert all(torch.equal(back2[k], sd[k]) for k in sd)
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "DINOv3ViTImageProcessor"
    assert pre["image_mean"] == [0.2] and pre["image_std"] == [0.3]
    card = (folder / "README.md").read_text()
    assert "HC18 + FETAL_PLANES_DB" in card and "| fetal_planes linear | accuracy | 0.8123 |" in card
    assert "see the datasets’ licences" in card and "1200" in card


def test_sharded_folder_is_read(tmp_path):
    from safetensors.torch import load_file, save_file

    sd = random_weights(TINY)
    folder = export_hf(sd, TINY, tmp_path / "hf")
    tensors = load_file(str(folder / "model.safetensors"))
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(folder / name))
    (folder / "model.safetensors").unlink()
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    back, _ = import_hf(folder)
    assert set(back) == set(sd)
    assert is_hf(folder / "model.safetensors.index.json")


@pytest.mark.parametrize("change, named", [
    (dict(norm_layer="rmsnorm"), "norm_layer='rmsnorm'"),
    (dict(pos_embed_rope_dtype="bf16"), "pos_embed_rope_dtype='bf16'"),
    (dict(pos_embed_rope_normalize_coords="max"), "pos_embed_rope_normalize_coords='max'"),
    (dict(pos_embed_rope_base=None, pos_embed_rope_min_period=0.5, pos_embed_rope_max_period=50.0),
     "pos_embed_rope_min_period"),
])
def test_inexpressible_feature_is_refused_by_name(change, named, tmp_path):
    arch = TINY | change
    with pytest.raises(CheckpointError, match=named.replace("(", r"\(")):
        hf_config(arch)
    with pytest.raises(CheckpointError, match="cannot express"):
        export_hf({}, arch, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_tampered_state_dicts_are_refused_with_the_keys(tmp_path):
    sd = random_weights(TINY)
    missing = {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(CheckpointError, match=r"missing: \['blocks.1.mlp.fc2.bias'\]"):
        to_hf_state_dict(missing, TINY)
    wrong = sd | {"cls_token": torch.zeros(1, 1, 32), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected: \['extra'\].*cls_token \(1, 1, 32\) != \(1, 1, 64\)"):
        to_hf_state_dict(wrong, TINY)
    bad_mask = {k: v.clone() for k, v in sd.items()}
    bad_mask["blocks.0.attn.qkv.bias_mask"][70] = 1  # would add a K bias transformers cannot have
    with pytest.raises(CheckpointError, match="blocks.0.attn.qkv.bias_mask"):
        to_hf_state_dict(bad_mask, TINY)
    bad_periods = sd | {"rope_embed.periods": sd["rope_embed.periods"] * 2}
    with pytest.raises(CheckpointError, match="rope_embed.periods"):
        to_hf_state_dict(bad_periods, TINY)

    hf = to_hf_state_dict(sd, TINY)
    del hf["model.layer.0.attention.k_proj.weight"]
    hf["norm.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"missing: \['model.layer.0.attention.k_proj.weight'\].*norm.bias"):
        from_hf_state_dict(hf, TINY)
    no_ls = TINY | {"layerscale_init": None}
    with pytest.raises(CheckpointError, match="layer_scale1.lambda1 is not all ones"):
        from_hf_state_dict(to_hf_state_dict(sd, TINY), no_ls)


def test_config_that_we_cannot_build_is_refused():
    config = hf_config(TINY)
    with pytest.raises(CheckpointError, match="layer_norm_eps=0.001"):
        arch_from_hf_config(config | {"layer_norm_eps": 1e-3})
    with pytest.raises(CheckpointError, match="hidden_act='gelu_new'"):
        arch_from_hf_config(config | {"hidden_act": "gelu_new"})
    gated = config | {"use_gated_mlp": True, "hidden_act": "silu", "dinov3_us_arch": None}
    assert arch_from_hf_config(gated | {"intermediate_size": 128})["ffn_layer"] == "swiglu"
    with pytest.raises(CheckpointError, match="intermediate_size=100"):  # no SwiGLU alignment gives 100
        arch_from_hf_config(gated | {"intermediate_size": 100})
    with pytest.raises(CheckpointError, match="model_type"):
        arch_from_hf_config(config | {"model_type": "dinov2"})


def test_official_transformers_config_is_read_without_our_arch():
    """A config as transformers writes it (no dinov3_us_arch): the released ViT-S/16 arch comes back."""
    config = transformers.DINOv3ViTConfig(
        hidden_size=384, num_attention_heads=6, intermediate_size=1536, num_register_tokens=4,
        layerscale_value=1e-5, layer_norm_eps=1e-5).to_dict()
    arch = arch_from_hf_config(config)
    assert arch == defaults() | VITS16
