"""Strict weight loading: named adaptations only, every mismatch listed."""

import pytest
import torch

from dinov3_us.errors import CheckpointError
from dinov3_us.hub import dinov3_vits16
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.weights import formats
from dinov3_us.weights.files import write_weights_file
from dinov3_us.weights.formats import read_state_dict, save_backbone
from dinov3_us.weights.load import load_backbone_weights
from dinov3_us.weights.sidecar import teacher_iteration

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


def test_the_same_values_give_the_same_file_whatever_storage_they_view(tmp_path):
    """A tensor gathered from uneven FSDP shards is a view of a padded buffer: written alone, not with the padding."""
    padded = torch.arange(8, dtype=torch.float32)
    a = write_weights_file({"w": padded[:5], "b": padded[5:7]}, tmp_path / "a.pth")
    b = write_weights_file({"w": torch.arange(5.0), "b": torch.tensor([5.0, 6.0])}, tmp_path / "b.pth")
    assert a.read_bytes() == b.read_bytes()


def test_a_crash_between_weights_and_sidecar_leaves_no_stale_sidecar(tmp_path, monkeypatch):
    path = save_backbone(DinoVisionTransformer(**KW).state_dict(), tmp_path / "teacher.pth", KW, iteration=4)
    assert teacher_iteration(path) == 4

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(formats, "write_weights_file", disk_full)
    with pytest.raises(OSError):
        save_backbone(DinoVisionTransformer(**KW).state_dict(), path, KW, iteration=9)
    assert teacher_iteration(path) is None  # the old file, no longer claimed to be iteration 4 or 9
