"""Strict weight loading: named adaptations only, every mismatch listed."""

import pytest
import torch

from dinov3_us.errors import CheckpointError
from dinov3_us.hub import dinov3_vits16
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.weights.formats import read_state_dict
from dinov3_us.weights.load import load_backbone_weights

KW = dict(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2, n_storage_tokens=4, mask_k_bias=True)


def test_missing_unexpected_and_shape_mismatch_are_listed():
    model = DinoVisionTransformer(**KW)
    state = DinoVisionTransformer(**KW).state_dict()
    del state["norm.bias"]
    state["blocks.7.extra"] = torch.zeros(1)
    state["cls_token"] = torch.zeros(1, 1, 32)
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(model, state)
    msg = str(err.value)
    assert "missing keys (1): ['norm.bias']" in msg
    assert "unexpected keys (1): ['blocks.7.extra']" in msg
    assert "cls_token: (1, 1, 32)" in msg


def test_backbone_prefix_and_file_roundtrip(tmp_path):
    src = DinoVisionTransformer(**KW)
    src.init_weights()
    path = tmp_path / "teacher.pth"
    torch.save({f"backbone.{k}": v for k, v in src.state_dict().items()}, path)
    dst = DinoVisionTransformer(**KW)
    load_backbone_weights(dst, path)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)


def test_missing_file_and_pretrained_without_weights(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone_weights(DinoVisionTransformer(**KW), tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="needs weights="):
        dinov3_vits16(pretrained=True)


@pytest.mark.slow
def test_hub_builder_loads_weights_strictly(tmp_path):
    ref = dinov3_vits16()
    path = tmp_path / "vits16.pth"
    torch.save(ref.state_dict(), path)
    again = dinov3_vits16(weights=path)
    torch.testing.assert_close(again.cls_token, ref.cls_token)
    gray = dinov3_vits16(weights=path, in_chans=1)
    torch.testing.assert_close(gray.patch_embed.proj.weight, ref.patch_embed.proj.weight.sum(1, keepdim=True))


def _truncated(path, data: bytes):
    path.write_bytes(data[: len(data) // 2])
    return path


def test_unreadable_files_name_the_file_and_what_it_is_not(tmp_path):
    from safetensors.torch import save_file

    state = DinoVisionTransformer(**KW).state_dict()
    good = tmp_path / "good.pth"
    torch.save(state, good)
    legacy = tmp_path / "legacy.pth"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    safe = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, safe)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.safetensors").write_text("hello")
    cases = {
        text: "is not a PyTorch or safetensors file",
        tmp_path / "text.safetensors": "is not a PyTorch or safetensors file",
        _truncated(tmp_path / "cut.pth", good.read_bytes()): "is truncated/corrupt: PytorchStreamReader failed",
        _truncated(tmp_path / "cut_legacy.pth", legacy.read_bytes()): "is truncated/corrupt: unexpected EOF",
        _truncated(tmp_path / "cut.safetensors", safe.read_bytes()): "is truncated/corrupt: Error while deserializing",
        tmp_path / "empty.pth": "is truncated/corrupt: empty file",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError) as err:
            read_state_dict(path)
        assert str(err.value).startswith(str(path)) and message in str(err.value)
        assert len(str(err.value).splitlines()) == 1
