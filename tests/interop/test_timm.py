"""Backbones to and from timm's DINOv3 (Eva) models: exact key mapping, round trips, and numerical identity.

The numerical test builds timm's real model. Where `import timm` works it is used as is. Where timm is
installed but cannot be imported because torchvision is missing or broken (this project's CPU machines:
torchvision does not load beside the CPU torch), the `timm` fixture imports it with a stand-in
`torchvision` package (`_TorchvisionStandIn`) and records every name timm touched. Those names
(torchvision.datasets.*, torchvision.transforms.*, InterpolationMode.*, ops.misc.FrozenBatchNorm2d,
models.feature_extraction.*) serve timm's data pipeline, dataset factory, BatchNorm freezing and FX
feature extraction, none of which `Eva` construction or `forward_features` reaches; each stand-in raises
when called, and the test asserts none was, so the model code that runs is timm's own.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import types

import pytest
import torch

from dinov3_us.errors import CheckpointError
from dinov3_us.hub import RELEASED_KWARGS
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.weights.timm import (
    export_timm,
    from_timm_state_dict,
    import_timm,
    looks_like_timm,
    timm_create_call,
    timm_model_args,
    to_timm_state_dict,
)

TINY = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, n_storage_tokens=4, ffn_ratio=4,
            layerscale_init=1e-5, mask_k_bias=True, qkv_bias=True, norm_layer="layernormbf16",
            pos_embed_rope_dtype="fp32")
VITS = RELEASED_KWARGS | dict(img_size=224, in_chans=1, embed_dim=384, depth=12, num_heads=6)
VITB = RELEASED_KWARGS | dict(img_size=224, in_chans=3, embed_dim=768, depth=12, num_heads=12)
# our other options: no storage tokens/LayerScale/q-v bias, eps-1e-6 LayerNorm, SwiGLU, no proj/ffn bias
VARIANT = dict(img_size=64, embed_dim=64, depth=2, num_heads=2, in_chans=1, n_storage_tokens=0, layerscale_init=None,
               qkv_bias=False, proj_bias=False, ffn_bias=False, ffn_layer="swiglu", ffn_ratio=6.0,
               norm_layer="layernorm", pos_embed_rope_dtype="fp32")
RMS = dict(TINY, norm_layer="rmsnorm", ffn_layer="swiglu64", ffn_ratio=3.0, pos_embed_rope_shift_coords=0.5)


def random_weights(arch: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of `DinoVisionTransformer(**arch)` with every learned tensor random (K bias 0, mask_token 0)."""
    torch.manual_seed(seed)
    model = DinoVisionTransformer(**arch)
    model.init_weights()
    sd = model.state_dict()
    for key, value in sd.items():
        if key in ("rope_embed.periods", "mask_token") or key.endswith("bias_mask"):
            continue
        value.copy_(torch.randn_like(value) * (0.02 if value.ndim > 1 else 0.1) + (1.0 if "norm" in key else 0.0))
        if key.endswith("attn.qkv.bias"):
            value[value.shape[0] // 3 : 2 * value.shape[0] // 3] = 0  # the K third, fixed at zero in training
    return sd


@pytest.fixture(scope="module")
def parity_weights(fixtures_dir):
    return torch.load(fixtures_dir / "dinov3_tiny_parity.pt", weights_only=True)["state_dict"]


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b), set(a) ^ set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---- 1. round trips, no timm needed --------------------------------------------------------------


def test_parity_fixture_round_trip(parity_weights, tmp_path):
    w = dict(parity_weights)
    t = to_timm_state_dict(w, TINY)
    assert looks_like_timm(t) and not looks_like_timm(w)
    assert "reg_token" in t and "blocks.0.gamma_1" in t and "blocks.0.attn.q_bias" in t and "mask_token" not in t
    back = from_timm_state_dict(t, TINY)
    w["mask_token"] = torch.zeros_like(w["mask_token"])  # pretraining-only, not in timm: restored as zeros
    for k in [k for k in w if k.endswith("attn.qkv.bias")]:  # the fixture's K thirds are random, but multiplied
        w[k] = w[k].clone()  # by bias_mask's 0 they never reach the output; timm holds no K bias: back as zeros
        w[k][64:128] = 0
    assert_same(back, w)
    path, call = export_timm(parity_weights, TINY, tmp_path / "tiny.pth", meta={"iteration": 7})
    assert call.startswith('timm.create_model("vit_base_patch16_dinov3_qkvb"')
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["format"] == "timm" and info["arch"] == TINY and info["iteration"] == 7
    assert info["create_call"] == call
    sd, arch = import_timm(path)
    assert arch == TINY
    assert_same(sd, w | {"mask_token": parity_weights["mask_token"]})  # kept bit for bit in the JSON beside it


@pytest.mark.parametrize("name, arch, suffix", [("vits", VITS, ".safetensors"), ("vitb", VITB, ".pth"),
                                                ("variant", VARIANT, ".pth"), ("rms", RMS, ".safetensors")])
@pytest.mark.slow
def test_round_trip_random_weights(tmp_path, name, arch, suffix):
    w = random_weights(arch)
    assert_same(from_timm_state_dict(to_timm_state_dict(w, arch), arch), w)
    path, _ = export_timm(w, arch, tmp_path / f"{name}{suffix}")
    sd, got_arch = import_timm(path)
    assert got_arch == arch
    assert_same(sd, w)


def test_model_names_and_create_call():
    assert timm_model_args(VITS)[0] == "vit_small_patch16_dinov3_qkvb"
    assert timm_model_args(VITB)[0] == "vit_base_patch16_dinov3_qkvb"
    assert timm_model_args(VITB | dict(qkv_bias=False, mask_k_bias=False))[0] == "vit_base_patch16_dinov3"
    assert timm_create_call(VITS) == (
        'timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, img_size=224, in_chans=1, '
        "num_classes=0, global_pool='token', rope_rescale_coords=2.0)"
    )
    _, kwargs = timm_model_args(VARIANT)
    assert kwargs.get("mlp_ratio", 4.0) * 64 == 256 and kwargs["swiglu_align_to"] == 8 and kwargs["init_values"] == 1.0
    assert "norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-06)" in timm_create_call(VARIANT)


def test_import_without_json_infers_arch(tmp_path):
    arch = RELEASED_KWARGS | dict(img_size=224, embed_dim=64, depth=2, num_heads=2)  # vit_test shape
    w = random_weights(arch)
    path, _ = export_timm(w, arch, tmp_path / "bare.pth")
    path.with_suffix(".json").unlink()
    sd, got = import_timm(path)
    assert got is None
    for k in w:
        if k != "mask_token":
            assert torch.equal(sd[k], w[k]), k
    odd = dict(arch, embed_dim=128, num_heads=4)  # (128, 2) is not a known shape: heads are ambiguous
    export_timm(random_weights(odd), odd, tmp_path / "odd.pth")[0].with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="number of attention heads"):
        import_timm(tmp_path / "odd.pth")


def test_looks_like_timm_key_families(parity_weights):
    assert not looks_like_timm(parity_weights)
    assert not looks_like_timm({"embeddings.cls_token": 0, "model.layer.0.attention.q_proj.weight": 0})
    assert looks_like_timm(to_timm_state_dict(random_weights(VARIANT), VARIANT))


# ---- 3. what timm cannot express, and tampered state dicts -----------------------------------------


@pytest.mark.parametrize("change, named", [
    (dict(pos_embed_rope_dtype="bf16"), "pos_embed_rope_dtype"),
    (dict(pos_embed_rope_normalize_coords="max"), "pos_embed_rope_normalize_coords"),
    (dict(pos_embed_rope_base=None, pos_embed_rope_min_period=0.5, pos_embed_rope_max_period=90.0), "min_period"),
    (dict(attention_backend="sdpa"), "attention_backend"),
])
def test_unsupported_feature_is_named(change, named):
    with pytest.raises(CheckpointError, match=named):
        timm_model_args(TINY | change)


def test_tampered_state_dicts_are_listed(parity_weights):
    w = dict(parity_weights)
    with pytest.raises(CheckpointError, match=r"missing \['blocks.1.ls2.gamma'\]"):
        to_timm_state_dict({k: v for k, v in w.items() if k != "blocks.1.ls2.gamma"}, TINY)
    with pytest.raises(CheckpointError, match=r"unexpected \['extra'\]"):
        to_timm_state_dict(w | {"extra": torch.zeros(1)}, TINY)
    with pytest.raises(CheckpointError, match=r"blocks.0.norm1.weight \(63,\) != \(64,\)"):
        to_timm_state_dict(w | {"blocks.0.norm1.weight": torch.zeros(63)}, TINY)
    with pytest.raises(CheckpointError, match="rope_embed.periods"):
        to_timm_state_dict(w | {"rope_embed.periods": w["rope_embed.periods"] * 2}, TINY)
    no_mask = dict(TINY, mask_k_bias=False)
    bias = w["blocks.0.attn.qkv.bias"].clone()
    bias[64 + 3] = 1.0
    with pytest.raises(CheckpointError, match=r"non-zero K bias .*blocks.0.attn.qkv.bias"):
        to_timm_state_dict({k: v for k, v in w.items() if not k.endswith("bias_mask")}
                           | {"blocks.0.attn.qkv.bias": bias}, no_mask)
    t = to_timm_state_dict(w, TINY)
    with pytest.raises(CheckpointError, match=r"missing \['reg_token'\].*unexpected \['storage_tokens'\]"):
        from_timm_state_dict({("storage_tokens" if k == "reg_token" else k): v for k, v in t.items()}, TINY)
    tv = to_timm_state_dict(random_weights(VARIANT), VARIANT)
    with pytest.raises(CheckpointError, match=r"non-zero.*blocks.1.attn.proj.bias"):
        from_timm_state_dict(tv | {"blocks.1.attn.proj.bias": torch.ones(64)}, VARIANT)


# ---- 2. numerical identity with timm's real model ---------------------------------------------------


class _StandInMeta(type):
    """A stand-in torchvision name: attribute access gives further stand-ins, calling it raises."""

    touched: set[str] = set()
    called: list[str] = []

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        full = f"{cls.__qualname__}.{name}"
        _StandInMeta.touched.add(full)
        return _StandInMeta(full, (), {"__qualname__": full})

    def __call__(cls, *args, **kwargs):
        _StandInMeta.called.append(cls.__qualname__)
        raise RuntimeError(f"stand-in {cls.__qualname__} was called: the timm code path needs real torchvision")


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        full = f"{self.__name__}.{name}"
        _StandInMeta.touched.add(full)
        return sys.modules.get(full) or _StandInMeta(full, (), {"__qualname__": full})


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        _StandInMeta.touched.add(spec.name)
        return _StandInModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


@pytest.fixture(scope="module")
def timm():
    """timm, imported normally, or with the torchvision stand-in when only torchvision stops it (see module doc)."""
    try:
        import timm as real

        return real
    except ImportError as e:
        if importlib.util.find_spec("timm") is None:
            pytest.skip(f"timm is not installed ({e}): `pip install timm` to run the numerical identity test")
        reason = e
    except RuntimeError as e:  # a torchvision that does not match torch: "operator torchvision::nms does not exist"
        reason = e
    if "torchvision" not in str(reason) and "nms" not in str(reason):
        pytest.skip(f"import timm failed: {reason}")
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in ("timm", "torchvision")}
    finder = _TorchvisionStandIn()
    sys.meta_path.insert(0, finder)
    try:
        import timm as stood_in
    finally:
        sys.meta_path.remove(finder)
        for k in [k for k in sys.modules if k.split(".")[0] == "torchvision"]:
            del sys.modules[k]
        sys.modules.update({k: v for k, v in saved.items() if k.split(".")[0] == "torchvision"})
    print(f"timm {stood_in.__version__} imported with torchvision stand-ins: {sorted(_StandInMeta.touched)}")
    yield stood_in
    assert not _StandInMeta.called, f"timm called torchvision stand-ins: {_StandInMeta.called}"


@pytest.mark.parametrize("name, arch, seed", [("tiny-parity", TINY, None), ("vits16", VITS, 1), ("vitb16", VITB, 2),
                                              ("variant", VARIANT, 3), ("rms-swiglu64", RMS, 4)])
@pytest.mark.parametrize("size", [(224, 224), (160, 224)])
@pytest.mark.slow
def test_numerically_identical_to_timm(timm, parity_weights, name, arch, seed, size):
    w = dict(parity_weights) if seed is None else random_weights(arch, seed)
    ours = DinoVisionTransformer(**arch)
    ours.load_state_dict(w, strict=True)
    ours.eval()
    model_name, kwargs = timm_model_args(arch)
    theirs = timm.create_model(model_name, pretrained=False, **kwargs)
    theirs.load_state_dict(to_timm_state_dict(w, arch), strict=True)
    theirs.eval()
    assert theirs.num_prefix_tokens == 1 + arch.get("n_storage_tokens", 0)
    torch.manual_seed(0)
    x = torch.randn(2, arch.get("in_chans", 3), *size)
    with torch.no_grad():
        out = ours.forward_features(x)
        feats = theirs.forward_features(x)
        pooled = theirs(x)
    n = theirs.num_prefix_tokens
    diffs = {
        "cls": (feats[:, 0] - out["x_norm_clstoken"]).abs().max().item(),
        "storage": (feats[:, 1:n] - out["x_storage_tokens"]).abs().max().item() if n > 1 else 0.0,
        "patch": (feats[:, n:] - out["x_norm_patchtokens"]).abs().max().item(),
        "pooled": (pooled - out["x_norm_clstoken"]).abs().max().item(),
    }
    print(f"max abs diff {name} {size[0]}x{size[1]}: {diffs}")
    assert max(diffs.values()) <= 1e-4, diffs
