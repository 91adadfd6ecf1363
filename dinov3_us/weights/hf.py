"""Our backbones to and from Hugging Face transformers' `DINOv3ViTModel` (model_type `dinov3_vit`), numerically exact.

`export_hf` writes a folder that `transformers.AutoModel.from_pretrained` loads with no missing or unexpected
key; `import_hf` reads such a folder back with `safetensors` and `json` only (transformers is not needed).

The contract: what is mapped, and why it is exact. It is stated in terms of `DINOv3ViTConfig` fields and
`DINOv3ViTModel` parameter names, which are what the transformers releases `setup.py` allows share; the
tests in `tests/interop/test_hf.py` load the export with the installed transformers (`strict`, no missing or
unexpected key) and compare its outputs with ours, so a release that changes any of this fails there.

- Tokens: both order them [CLS, storage/register tokens, patches]; our `n_storage_tokens` is their
  `num_register_tokens`. Their `embeddings.register_tokens` parameter exists even with 0 registers (shape
  [1, 0, D]); we write that empty tensor. Their `mask_token` is [1, 1, D], ours [1, D].
- Final norm: both normalise every token with the last norm; `pooler_output` is the normed CLS token,
  `last_hidden_state[:, 0]`, i.e. our `x_norm_clstoken`; our `x_norm_patchtokens` is
  `last_hidden_state[:, 1 + n_storage_tokens:]`.
- RoPE: only patch tokens are rotated, prefix tokens are left as they are (ours: `SelfAttention.apply_rope`).
  Coordinates are patch centres in [-1, 1], normalised by H and W separately, which is our
  `pos_embed_rope_normalize_coords="separate"`; "min"/"max" cannot be expressed. Their inverse frequencies are
  1 / rope_theta ** (4 i / D_head), the inverse of our `periods` = base ** (4 i / D_head), so
  `rope_theta = pos_embed_rope_base`; periods given by min/max period cannot be expressed. Their frequencies are
  a non-persistent buffer recomputed from the config, so our persistent `rope_embed.periods` is not exported: it
  is checked against the base on export and recomputed on import. They build the angles in float32 and cast
  to the input dtype at the end, so only `pos_embed_rope_dtype="fp32"` maps exactly (bf16/fp16 RoPE tables are
  refused). The same 2*pi*coord*freq angles, `tile(2)` layout and rotate-half are used on both sides.
  Training-time shift / jitter / rescale map to the config's `pos_embed_shift` / `pos_embed_jitter` /
  `pos_embed_rescale`.
- Attention: our fused `qkv` ([3D, D], rows q | k | v, heads contiguous within each) is split into
  `q_proj`/`k_proj`/`v_proj`; `proj` is `o_proj`. The biases are per projection (config `query_bias`,
  `key_bias`, `value_bias`): the official K-bias mask (`mask_k_bias`, buffer `attn.qkv.bias_mask`) maps to
  `key_bias=False`; the K third of our raw `qkv.bias` is never used then, so it is dropped (and comes back as
  zeros). A `bias_mask` other than (1, 0, 1) thirds would change the numbers and is refused.
- LayerScale: transformers always has `layer_scale{1,2}.lambda1`; a backbone without LayerScale
  (`layerscale_init=None`) is exported with lambda1 = ones, which is exact (x * 1.0 == x).
- Norms: only `nn.LayerNorm` with the config's `layer_norm_eps`: our "layernorm" (eps 1e-6) and
  "layernormbf16" (eps 1e-5) map, "rmsnorm" cannot be expressed.
- FFN: "mlp" is `up_proj` (fc1) -> GELU (exact, `hidden_act="gelu"`) -> `down_proj` (fc2); "swiglu*" is
  `use_gated_mlp=True`, `hidden_act="silu"`: `down(silu(gate(x)) * up(x))` with our w1 = gate, w2 = up,
  w3 = down. `intermediate_size` is the actual hidden width (SwiGLU's 2/3 and alignment already applied).

Our full `arch` is also stored in `config.json` under `dinov3_us_arch` (transformers keeps unknown keys) so that the
few choices transformers cannot tell apart (no LayerScale vs LayerScale 1.0, the SwiGLU alignment, `img_size`)
round-trip; the transformers fields always win and are cross-checked against it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from dinov3_us.errors import CheckpointError
from dinov3_us.fileio import atomic_path, write_atomic, write_json_atomic
from dinov3_us.layers.ffn_layers import SWIGLU_ALIGN
from dinov3_us.models.vision_transformer import complete_arch, ffn_hidden_features

logger = logging.getLogger("dinov3_us")

MODEL_TYPE = "dinov3_vit"
ARCH_KEY = "dinov3_us_arch"  # our kwargs, stored in config.json beside transformers' own fields
NORM_EPS = {"layernorm": 1e-6, "layernormbf16": 1e-5}
DEFAULT_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, the official DINOv3 normalisation
DEFAULT_STD = (0.229, 0.224, 0.225)
# transformers config fields that hf_config derives from arch and that arch_from_hf_config must reproduce
_CHECKED_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps",
    "rope_theta", "num_channels", "patch_size", "query_bias", "key_bias", "value_bias", "proj_bias", "mlp_bias",
    "use_gated_mlp", "num_register_tokens", "pos_embed_shift", "pos_embed_jitter", "pos_embed_rescale",
)


def _refuse(feature: str, why: str) -> CheckpointError:
    return CheckpointError(f"cannot express {feature} in transformers' DINOv3ViTModel: {why}")


def hf_config(arch: dict) -> dict:
    """The `DINOv3ViTConfig` fields (a JSON-able dict, with `model_type` and `architectures`) of our backbone `arch`.

    Raises `CheckpointError` naming the first feature that transformers' DINOv3 cannot express exactly.
    """
    a = complete_arch(arch)
    if a["norm_layer"] not in NORM_EPS:
        raise _refuse(f"norm_layer={a['norm_layer']!r}", "it only has nn.LayerNorm (layernorm / layernormbf16)")
    if a["ffn_layer"] != "mlp" and a["ffn_layer"] not in SWIGLU_ALIGN:
        raise _refuse(f"ffn_layer={a['ffn_layer']!r}", "only mlp and swiglu* exist")
    if a["pos_embed_rope_base"] is None or a["pos_embed_rope_min_period"] is not None:
        raise _refuse("pos_embed_rope_min_period/max_period", "RoPE periods come from rope_theta (a base) only")
    if a["pos_embed_rope_normalize_coords"] != "separate":
        raise _refuse(f"pos_embed_rope_normalize_coords={a['pos_embed_rope_normalize_coords']!r}",
                      "it normalises RoPE coordinates by H and W separately only ('separate')")
    if a["pos_embed_rope_dtype"] != "fp32":
        raise _refuse(f"pos_embed_rope_dtype={a['pos_embed_rope_dtype']!r}",
                      "it computes the RoPE tables in float32 only (a bf16/fp16-RoPE backbone's numbers differ)")
    if a["embed_dim"] % (4 * a["num_heads"]):
        raise _refuse(f"embed_dim={a['embed_dim']} with num_heads={a['num_heads']}", "RoPE needs D_head % 4 == 0")
    patch_size, img_size = a["patch_size"], a["img_size"]
    if not isinstance(patch_size, int):
        raise _refuse(f"patch_size={patch_size!r}", "only a square patch (one int) is kept by dinov3_us archs")
    gated = a["ffn_layer"] != "mlp"
    qkv_bias, masked = bool(a["qkv_bias"]), bool(a["qkv_bias"] and a["mask_k_bias"])
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["DINOv3ViTModel"],
        "hidden_size": a["embed_dim"],
        "num_hidden_layers": a["depth"],
        "num_attention_heads": a["num_heads"],
        "intermediate_size": ffn_hidden_features(a),
        "hidden_act": "silu" if gated else "gelu",
        "use_gated_mlp": gated,
        "mlp_bias": bool(a["ffn_bias"]),
        "layer_norm_eps": NORM_EPS[a["norm_layer"]],
        "layerscale_value": 1.0 if a["layerscale_init"] is None else float(a["layerscale_init"]),
        "rope_theta": float(a["pos_embed_rope_base"]),
        "pos_embed_shift": a["pos_embed_rope_shift_coords"],
        "pos_embed_jitter": a["pos_embed_rope_jitter_coords"],
        "pos_embed_rescale": a["pos_embed_rope_rescale_coords"],
        "image_size": list(img_size) if isinstance(img_size, (tuple, list)) else img_size,
        "patch_size": patch_size,
        "num_channels": a["in_chans"],
        "query_bias": qkv_bias,
        "key_bias": qkv_bias and not masked,
        "value_bias": qkv_bias,
        "proj_bias": bool(a["proj_bias"]),
        "num_register_tokens": a["n_storage_tokens"],
        "attention_dropout": 0.0,
        "drop_path_rate": 0.0,
        "initializer_range": 0.02,
        ARCH_KEY: {k: (list(v) if isinstance(v, tuple) else v) for k, v in a.items() if k != "drop_path_rate"},
    }


def arch_from_hf_config(config: dict) -> dict:
    """Our `DinoVisionTransformer` kwargs from a `DINOv3ViTConfig` dict (config.json); refuses what we cannot build."""
    if config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"config model_type is {config.get('model_type')!r}, expected {MODEL_TYPE!r}")
    c = {k: v for k, v in config.items()}
    defaults = {"patch_size": 16, "hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12,
                "num_attention_heads": 6, "hidden_act": "gelu", "layer_norm_eps": 1e-5, "rope_theta": 100.0,
                "image_size": 224, "num_channels": 3, "query_bias": True, "key_bias": False, "value_bias": True,
                "proj_bias": True, "mlp_bias": True, "layerscale_value": 1.0, "use_gated_mlp": False,
                "num_register_tokens": 0, "pos_embed_shift": None, "pos_embed_jitter": None, "pos_embed_rescale": 2.0}
    c = defaults | c
    stored = c.get(ARCH_KEY) or {}
    eps = {v: k for k, v in NORM_EPS.items()}
    norm = next((name for e, name in eps.items() if math.isclose(float(c["layer_norm_eps"]), e)), None)
    if norm is None:
        raise CheckpointError(f"layer_norm_eps={c['layer_norm_eps']} has no dinov3_us norm_layer (1e-6 or 1e-5)")
    if c["query_bias"] != c["value_bias"]:
        raise CheckpointError(f"query_bias={c['query_bias']} with value_bias={c['value_bias']}: our qkv has one bias")
    if c["key_bias"] and not c["query_bias"]:
        raise CheckpointError("key_bias=True without query/value bias has no dinov3_us equivalent")
    patch = c["patch_size"]
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise CheckpointError(f"patch_size={patch} is not square: dinov3_us archs take one int")
        patch = patch[0]
    img = c["image_size"]
    if isinstance(img, (list, tuple)):
        img = img[0] if len(set(img)) == 1 else list(img)
    dim, gated = int(c["hidden_size"]), bool(c["use_gated_mlp"])
    act = "silu" if gated else "gelu"
    if c["hidden_act"] != act:
        raise CheckpointError(f"hidden_act={c['hidden_act']!r} with use_gated_mlp={gated}: dinov3_us needs {act!r}")
    arch = {
        "img_size": img,
        "patch_size": int(patch),
        "in_chans": int(c["num_channels"]),
        "pos_embed_rope_base": float(c["rope_theta"]),
        "pos_embed_rope_min_period": None,
        "pos_embed_rope_max_period": None,
        "pos_embed_rope_normalize_coords": "separate",
        "pos_embed_rope_shift_coords": c["pos_embed_shift"],
        "pos_embed_rope_jitter_coords": c["pos_embed_jitter"],
        "pos_embed_rope_rescale_coords": c["pos_embed_rescale"],
        "pos_embed_rope_dtype": "fp32",
        "embed_dim": dim,
        "depth": int(c["num_hidden_layers"]),
        "num_heads": int(c["num_attention_heads"]),
        "qkv_bias": bool(c["query_bias"]),
        "layerscale_init": float(c["layerscale_value"]),
        "norm_layer": norm,
        "ffn_bias": bool(c["mlp_bias"]),
        "proj_bias": bool(c["proj_bias"]),
        "n_storage_tokens": int(c["num_register_tokens"]),
        "mask_k_bias": bool(c["query_bias"] and not c["key_bias"]),
    }
    hidden = int(c["intermediate_size"])
    ffn = _ffn_from_hidden(dim, hidden, gated, stored)
    if ffn is None:
        raise CheckpointError(f"intermediate_size={hidden} (use_gated_mlp={gated}) has no dinov3_us ffn_ratio")
    arch["ffn_layer"], arch["ffn_ratio"] = ffn
    # choices transformers cannot tell apart: taken from our stored arch when it agrees
    if stored.get("layerscale_init", "absent") is None and arch["layerscale_init"] == 1.0:
        arch["layerscale_init"] = None
    if "img_size" in stored and patch == stored.get("patch_size"):
        arch["img_size"] = stored["img_size"]
    if not arch["qkv_bias"]:
        arch["mask_k_bias"] = bool(stored.get("mask_k_bias", False))
    derived = hf_config(arch)
    bad = [f"{k}: {c[k]!r} (built: {derived[k]!r})" for k in _CHECKED_FIELDS
           if k in config and _norm_value(config[k]) != _norm_value(derived[k])]
    if bad:
        raise CheckpointError(f"config fields dinov3_us cannot reproduce: {'; '.join(bad)}")
    return arch


def _norm_value(v):
    if isinstance(v, (list, tuple)):
        return [_norm_value(x) for x in v] if len(set(v)) != 1 else _norm_value(v[0])
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _ffn_from_hidden(dim: int, hidden: int, gated: bool, stored: Mapping) -> tuple[str, float] | None:
    """(ffn_layer, ffn_ratio) giving `hidden` as the FFN width: the stored ones if they do, else a reconstruction."""
    candidates = []
    if stored.get("ffn_layer") is not None and stored.get("ffn_ratio") is not None:
        candidates.append((stored["ffn_layer"], stored["ffn_ratio"]))
    if gated:
        features = math.ceil(hidden * 3 / 2)  # int(features * 2 / 3) == hidden
        candidates += [(name, features / dim) for name in SWIGLU_ALIGN]
    else:
        candidates.append(("mlp", hidden / dim))
    for name, ratio in candidates:
        if not (name == "mlp" or name in SWIGLU_ALIGN) or (name != "mlp") != gated:
            continue
        if ffn_hidden_features({"embed_dim": dim, "ffn_ratio": ratio, "ffn_layer": name}) == hidden:
            return name, ratio
    return None


# ---- state dicts --------------------------------------------------------------------------------------------


def _meta_state_dict(arch: Mapping) -> dict[str, Tensor]:
    from dinov3_us.models.vision_transformer import DinoVisionTransformer

    with torch.device("meta"):
        model = DinoVisionTransformer(**complete_arch(arch))
    return model.state_dict()


def _check_keys(sd: Mapping[str, Tensor], expected: Mapping[str, Tensor], what: str) -> None:
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(f"{k} {tuple(sd[k].shape)} != {tuple(expected[k].shape)}"
                    for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{name}: {items}" for name, items in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if items]
        raise CheckpointError(f"{what} does not match the architecture: {'; '.join(parts)}")


def _block_map(i: int, arch: Mapping) -> list[tuple[str, str]]:
    """(our suffix, HF suffix) of one block's one-to-one tensors."""
    ours, hf = f"blocks.{i}.", f"model.layer.{i}."
    pairs = [("norm1.weight", "norm1.weight"), ("norm1.bias", "norm1.bias"),
             ("norm2.weight", "norm2.weight"), ("norm2.bias", "norm2.bias"),
             ("attn.proj.weight", "attention.o_proj.weight")]
    if arch["proj_bias"]:
        pairs.append(("attn.proj.bias", "attention.o_proj.bias"))
    ffn = [("fc1", "up_proj"), ("fc2", "down_proj")] if arch["ffn_layer"] == "mlp" else \
        [("w1", "gate_proj"), ("w2", "up_proj"), ("w3", "down_proj")]
    for a, b in ffn:
        pairs.append((f"mlp.{a}.weight", f"mlp.{b}.weight"))
        if arch["ffn_bias"]:
            pairs.append((f"mlp.{a}.bias", f"mlp.{b}.bias"))
    return [(ours + a, hf + b) for a, b in pairs]


def _rope_periods(arch: Mapping) -> Tensor:
    from dinov3_us.dtypes import DTYPES
    from dinov3_us.layers import RopePositionEmbedding

    rope = RopePositionEmbedding(arch["embed_dim"], num_heads=arch["num_heads"], base=arch["pos_embed_rope_base"],
                                 dtype=DTYPES[arch["pos_embed_rope_dtype"]])
    return rope.periods


def _to_hf(sd: Mapping[str, Tensor], arch: Mapping) -> dict[str, Tensor]:
    """The key/shape mapping only (also used on meta tensors to get the expected transformers keys)."""
    D = arch["embed_dim"]
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"].reshape(1, 1, D),
        "embeddings.register_tokens": sd["storage_tokens"] if arch["n_storage_tokens"] > 0
        else sd["cls_token"].new_zeros(1, 0, D),
        "embeddings.patch_embeddings.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": sd["patch_embed.proj.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
    }
    for i in range(arch["depth"]):
        for ours, hf in _block_map(i, arch):
            out[hf] = sd[ours]
        p, hf = f"blocks.{i}.", f"model.layer.{i}.attention."
        for name, w in zip("qkv", sd[p + "attn.qkv.weight"].chunk(3, dim=0)):
            out[f"{hf}{name}_proj.weight"] = w
        if arch["qkv_bias"]:
            bq, bk, bv = sd[p + "attn.qkv.bias"].chunk(3, dim=0)
            out[hf + "q_proj.bias"], out[hf + "v_proj.bias"] = bq, bv
            if not arch["mask_k_bias"]:
                out[hf + "k_proj.bias"] = bk
        for n in (1, 2):
            key = f"{p}ls{n}.gamma"
            out[f"model.layer.{i}.layer_scale{n}.lambda1"] = sd[key] if arch["layerscale_init"] is not None \
                else sd["norm.weight"].new_ones(D)
    return {k: v.contiguous() for k, v in out.items()}


def to_hf_state_dict(sd: dict[str, Tensor], arch: dict) -> dict[str, Tensor]:
    """Our official-format state dict -> `DINOv3ViTModel`'s keys, with no numeric change (strict)."""
    hf_config(arch)  # refuses what transformers cannot express
    a = complete_arch(arch)
    _check_keys(sd, _meta_state_dict(a), "the dinov3_us state dict")
    periods = sd["rope_embed.periods"]
    expected = _rope_periods(a)
    if not torch.allclose(periods.float(), expected.float(), rtol=1e-6, atol=0):
        raise CheckpointError(f"rope_embed.periods differs from the periods of pos_embed_rope_base="
                              f"{a['pos_embed_rope_base']}; transformers recomputes them from rope_theta")
    if a["qkv_bias"] and a["mask_k_bias"]:
        for i in range(a["depth"]):
            key = f"blocks.{i}.attn.qkv.bias_mask"
            mask = sd[key].float()
            want = torch.ones_like(mask)
            want[mask.numel() // 3: 2 * mask.numel() // 3] = 0
            if not torch.equal(mask, want):
                raise CheckpointError(f"{key} is not the official K-bias mask (1 for q and v, 0 for k): "
                                      "transformers has no per-element bias mask")
    return _to_hf(sd, a)


def from_hf_state_dict(sd: dict[str, Tensor], arch: dict) -> dict[str, Tensor]:
    """`DINOv3ViTModel`'s state dict -> our official-format keys (strict; the inverse of `to_hf_state_dict`)."""
    a = complete_arch(arch)
    meta = _meta_state_dict(a)
    _check_keys(sd, _to_hf(meta, a), "the transformers state dict")
    D = a["embed_dim"]
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "mask_token": sd["embeddings.mask_token"].reshape(1, D),
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
        "rope_embed.periods": _rope_periods(a),
    }
    if a["n_storage_tokens"] > 0:
        out["storage_tokens"] = sd["embeddings.register_tokens"]
    for i in range(a["depth"]):
        for ours, hf in _block_map(i, a):
            out[ours] = sd[hf]
        p, hf = f"blocks.{i}.", f"model.layer.{i}."
        out[p + "attn.qkv.weight"] = torch.cat([sd[f"{hf}attention.{n}_proj.weight"] for n in "qkv"])
        if a["qkv_bias"]:
            bq, bv = sd[hf + "attention.q_proj.bias"], sd[hf + "attention.v_proj.bias"]
            bk = torch.zeros_like(bq) if a["mask_k_bias"] else sd[hf + "attention.k_proj.bias"]
            out[p + "attn.qkv.bias"] = torch.cat([bq, bk, bv])
            if a["mask_k_bias"]:
                mask = torch.ones(3 * D, dtype=bq.dtype)
                mask[D: 2 * D] = 0
                out[p + "attn.qkv.bias_mask"] = mask
        for n in (1, 2):
            lam = sd[f"{hf}layer_scale{n}.lambda1"]
            if a["layerscale_init"] is not None:
                out[f"{p}ls{n}.gamma"] = lam
            elif not torch.all(lam == 1):
                raise CheckpointError(f"{hf}layer_scale{n}.lambda1 is not all ones but the arch has no LayerScale "
                                      "(layerscale_init=None)")
    _check_keys(out, meta, "the converted state dict")  # internal consistency: our own mapping is complete
    return {k: v.contiguous() for k, v in out.items()}


# ---- folders ------------------------------------------------------------------------------------------------


def _preprocessor(arch: Mapping, meta: Mapping) -> dict:
    in_chans = int(meta.get("in_chans", arch["in_chans"]))
    mean = list(meta.get("image_mean") or (DEFAULT_MEAN if in_chans == 3 else [0.5] * in_chans))
    std = list(meta.get("image_std") or (DEFAULT_STD if in_chans == 3 else [0.5] * in_chans))
    if len(mean) != in_chans or len(std) != in_chans:
        raise CheckpointError(f"meta image_mean/image_std have {len(mean)}/{len(std)} values for {in_chans} channels")
    size = arch["img_size"]
    h, w = (size, size) if isinstance(size, int) else size
    return {
        "image_processor_type": "DINOv3ViTImageProcessor",
        "do_resize": True,
        "size": {"height": h, "width": w},
        "resample": 2,  # bilinear
        "do_center_crop": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
    }


def _model_card(arch: Mapping, config: Mapping, meta: Mapping, pre: Mapping) -> str:
    licence = meta.get("licence") or meta.get("license")
    lines = ["---", "library_name: transformers", "pipeline_tag: image-feature-extraction",
             "tags: [dinov3, vision-transformer, ultrasound, self-supervised]", "---", "",
             f"# {meta.get('name', 'dinov3_us backbone')}", "",
             "A DINOv3 ViT backbone pretrained with dinov3_us (DINOv3 self-supervised learning on fetal "
             "ultrasound), exported to transformers' `DINOv3ViTModel` with numerically identical outputs.", "",
             "| | |", "|---|---|",
             f"| architecture | ViT: {arch['embed_dim']} dim, {arch['depth']} blocks, {arch['num_heads']} heads, "
             f"patch {arch['patch_size']}, {arch['n_storage_tokens']} register tokens, {arch['ffn_layer']} FFN |",
             f"| input channels | {config['num_channels']} |",
             f"| data | {meta.get('data', 'not recorded')} |",
             f"| recipe | {meta.get('recipe', meta.get('config', 'not recorded'))} |",
             f"| iterations | {meta.get('iterations', meta.get('iteration', 'not recorded'))} |",
             f"| data licence | {licence or 'see the datasets’ licences'} |", ""]
    results = meta.get("results") or {}
    if results:
        lines += ["## Evaluation", "", "| task | metric | value |", "|---|---|---|"]
        for task, value in results.items():
            items = value.items() if isinstance(value, Mapping) else [("", value)]
            for metric, v in items:
                shown = f"{v:.4g}" if isinstance(v, float) else str(v)
                lines.append(f"| {task} | {metric} | {shown} |")
        lines.append("")
    channels = ("a 1-channel (grayscale) image: pass `pixel_values` of shape [B, 1, H, W]; if your pipeline "
                "produces RGB, average the channels first" if config["num_channels"] == 1 else "RGB images")
    lines += ["## Use", "", "```python", "from transformers import AutoModel", "",
              "model = AutoModel.from_pretrained(path)  # DINOv3ViTModel",
              "out = model(pixel_values)  # pixel_values normalised as in preprocessor_config.json",
              "cls = out.pooler_output  # [B, D], normed CLS token",
              f"patches = out.last_hidden_state[:, {1 + arch['n_storage_tokens']}:]  # [B, H/p * W/p, D]", "```", "",
              f"Input: {channels}, scaled to [0, 1] and normalised with mean {pre['image_mean']} and std "
              f"{pre['image_std']}. Any height and width that are multiples of {arch['patch_size']} work (RoPE).", ""]
    return "\n".join(lines)


def export_hf(state_dict: dict[str, Tensor], arch: dict, folder: str | os.PathLike, *,
              meta: dict | None = None) -> Path:
    """Write a transformers folder: config.json, model.safetensors, preprocessor_config.json and README.md.

    `meta` (optional): `image_mean`/`image_std`/`in_chans` (the training normalisation), `data`, `recipe`,
    `iterations`, `results` ({task: value or {metric: value}}), `licence`, `name`. Returns the folder.
    """
    from safetensors.torch import save_file

    meta = dict(meta or {})
    folder = Path(folder)
    config = hf_config(arch)
    tensors = {k: v.detach().cpu().contiguous() for k, v in to_hf_state_dict(state_dict, arch).items()}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json_atomic(folder / "config.json", config)
    a = complete_arch(arch)
    pre = _preprocessor(a, meta)
    write_json_atomic(folder / "preprocessor_config.json", pre)
    write_atomic(folder / "README.md", _model_card(a, config, meta, pre))
    logger.info("wrote the transformers folder %s (%d tensors)", folder, len(tensors))
    return folder


def _config_beside(path: Path) -> Path:
    return (path if path.is_dir() else path.parent) / "config.json"


def is_hf(path: str | os.PathLike) -> bool:
    """True for a folder whose config.json is a DINOv3 transformers config, or a .safetensors file beside one."""
    path = Path(path)
    if not (path.is_dir() or (path.is_file() and path.name.endswith((".safetensors", ".safetensors.index.json")))):
        return False
    try:
        return json.loads(_config_beside(path).read_text(encoding="utf-8")).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if path.is_dir():
        index = path / "model.safetensors.index.json"
        path = index if index.is_file() and not (path / "model.safetensors").is_file() else path / "model.safetensors"
    if path.name.endswith(".index.json"):
        weight_map: dict = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        out: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            for k, v in load_file(str(path.parent / shard)).items():
                if k in out:
                    raise CheckpointError(f"{k} is in more than one shard of {path}")
                out[k] = v
        return out
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (expected model.safetensors or model.safetensors.index.json)")
    return load_file(str(path))


def import_hf(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """(our official-key state dict, arch) from a transformers DINOv3 folder or a .safetensors beside config.json.

    Sharded folders (`model.safetensors.index.json`) are read too. Needs only safetensors, not transformers.
    """
    path = Path(path)
    config_path = _config_beside(path)
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} does not exist: a transformers folder needs its config.json")
    arch = arch_from_hf_config(json.loads(config_path.read_text(encoding="utf-8")))
    return from_hf_state_dict(_load_tensors(path), arch), arch


__all__: list[str] = ["arch_from_hf_config", "export_hf", "from_hf_state_dict", "hf_config", "import_hf", "is_hf",
                      "to_hf_state_dict"]
