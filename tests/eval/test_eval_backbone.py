"""`load_eval_backbone`: architecture from the state dict or the JSON beside it, strict loading, sha256."""

import hashlib
import json

import pytest
import torch

from dinov3_us.errors import CheckpointError, ConfigError
from dinov3_us.eval.backbone import load_eval_backbone
from dinov3_us.hub import dinov3_vits16
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.weights import infer_arch, save_backbone

TINY = dict(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2)


def _outputs(model, in_chans=3):
    x = torch.randn(2, in_chans, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval().forward_features(x)["x_norm_clstoken"]


def test_infers_the_released_vits16_architecture_and_loads_it(tmp_path):
    ref = dinov3_vits16()
    arch = infer_arch(ref.state_dict())
    assert (arch["embed_dim"], arch["depth"], arch["num_heads"]) == (384, 12, 6)
    assert arch["n_storage_tokens"] == 4 and arch["mask_k_bias"] and arch["ffn_layer"] == "mlp"
    assert arch["norm_layer"] == "layernormbf16" and arch["in_chans"] == 3 and arch["patch_size"] == 16
    path = tmp_path / "dinov3_vits16_pretrain.pth"
    torch.save(ref.state_dict(), path)
    loaded = load_eval_backbone(path, arch="vit_small", img_size=32)
    assert loaded.kind == "official"
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    torch.testing.assert_close(_outputs(loaded.model), _outputs(ref))
    gray = load_eval_backbone(path, in_chans=1, img_size=32)  # RGB filters summed (a named adaptation)
    assert gray.model.patch_embed.proj.weight.shape[1] == 1


@pytest.mark.parametrize("variant", [
    dict(ffn_layer="swiglu64", ffn_ratio=3.0, norm_layer="rmsnorm", n_storage_tokens=0),
    dict(ffn_layer="mlp", qkv_bias=False, layerscale_init=None, mask_k_bias=False, in_chans=1,
         norm_layer="layernormbf16"),  # LayerNorm eps is not in a state dict: the released 1e-5 is assumed
])
def test_infers_other_variants(tmp_path, variant):
    ref = DinoVisionTransformer(**TINY, **variant, pos_embed_rope_dtype="fp32")
    ref.init_weights()
    path = tmp_path / "w.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in ref.state_dict().items()}}, path)  # official training ckpt
    loaded = load_eval_backbone(path, img_size=32)
    torch.testing.assert_close(_outputs(loaded.model, ref.in_chans), _outputs(ref, ref.in_chans))


def test_exported_teacher_uses_its_json(tmp_path):
    arch = dict(TINY, in_chans=1, n_storage_tokens=2, norm_layer="layernorm", pos_embed_rope_dtype="fp32")
    src = DinoVisionTransformer(**arch)
    src.init_weights()
    path = save_backbone(src.state_dict(), tmp_path / "teacher_checkpoint.pth", arch, iteration=7, source="test")
    loaded = load_eval_backbone(path, img_size=32)
    assert loaded.kind == "exported" and loaded.info["iteration"] == 7
    assert loaded.describe()["arch"]["n_storage_tokens"] == 2
    torch.testing.assert_close(_outputs(loaded.model, 1), _outputs(src, 1))


def test_mismatching_files_are_checkpoint_errors(tmp_path):
    path = tmp_path / "vits16.pth"
    torch.save(dinov3_vits16().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"--arch vit_base"):
        load_eval_backbone(path, arch="vit_base")
    # a JSON that describes another architecture than the weights beside it
    (tmp_path / "vits16.json").write_text(json.dumps({"arch": dict(TINY)}))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_eval_backbone(path, img_size=32)
    torch.save({"head.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="cannot infer"):
        load_eval_backbone(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_eval_backbone(tmp_path / "missing.pth")


def test_random_needs_an_arch_and_is_seeded():
    with pytest.raises(ConfigError, match="needs --arch"):
        load_eval_backbone("random")
    a, b = load_eval_backbone("random", arch="vit_test", img_size=32), load_eval_backbone("random", arch="vit_test")
    c = load_eval_backbone("random", arch="vit_test", seed=1)
    assert a.sha256 == b.sha256 != c.sha256 and a.kind == "random" and a.model.in_chans == 1
