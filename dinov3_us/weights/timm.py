"""Backbones in and out of timm's DINOv3 models (`vit_*_patch16_dinov3*`, built on timm's `Eva`), key for key.

timm is not imported here: this module maps architectures and state dicts only. The contract below
names timm's classes, functions and keyword arguments (no line numbers: `setup.py` allows a range of
timm releases); `tests/interop/test_timm.py` builds the model with the installed timm, loads the
export with `strict=True` and compares its outputs with ours, so a release that changes it fails there.

What timm's model is (from the timm sources):

- `timm/models/eva.py`, `vit_small_patch16_dinov3_qkvb` & co.: `Eva(patch_size=16,
  dynamic_img_size=True, init_values=1e-5, rope_type="dinov3", rope_temperature=100,
  rope_rotate_half=True, use_abs_pos_emb=False, num_reg_tokens=4, use_fc_norm=False,
  norm_layer=partial(LayerNorm, eps=1e-5))`; `_qkvb` variants set `qkv_bias=True`. The `plus` models
  add `swiglu_mlp=True, swiglu_align_to=8`. Pooling defaults to "avg"; we pass `global_pool="token"`
  so `model(x)` is the normed CLS token, as our `forward()`.
- RoPE, `timm/layers/pos_embed_sincos.py` `RotaryEmbeddingDinoV3` and `_build_grid`:
  periods `temperature ** (2 i / (D_head / 2))`, i < D_head / 4, computed in float32 and
  never stored (`periods` is a non-persistent buffer kept at >= float32 by `_freq_buffer_dtype`);
  coordinates are patch centres `(arange(0.5, s) / s) * 2 - 1` with "separate" normalisation (Eva
  passes no `normalize_coords`, no `min_period`/`max_period`: only `rope_temperature`);
  angles `2 pi coord / period`, (h then w) frequencies, laid out `cat([a, a])` (rotate-half,
  `_rope_layout`) and applied as `x cos + rotate_half(x) sin` (`apply_rot_embed`) to the patch tokens
  only: the first `num_prefix_tokens = 1 + num_reg_tokens` tokens (CLS, then registers) are skipped
  (`EvaAttention.forward`). Shift/jitter/rescale augmentations run only in training
  (`_create_embed`: `self.training and self.aug_active`); in eval the RoPE equals ours exactly when ours
  is computed in float32. Ours in bf16/fp16 (`pos_embed_rope_dtype`) computes the tables and rotates q/k
  in that dtype, which timm cannot do: that arch is refused (CheckpointError) rather than exported with
  a silent numeric change.
- Attention, `EvaAttention`: fused `qkv.weight` without bias, plus parameters `q_bias`
  and `v_bias` and a non-persistent all-zero `k_bias` buffer. Our `qkv.bias` [3D] is split into
  thirds; its K third must be zero (always true with `mask_k_bias`, where it is multiplied by the
  `bias_mask` buffer's 0: we drop it and restore zeros). `proj` always has a bias.
- Block, `EvaBlock`: LayerScale as plain parameters `gamma_1`/`gamma_2` (ours
  `ls1.gamma`/`ls2.gamma`), `Mlp(fc1, GELU, fc2)` with biases, or with `swiglu_align_to > 0`
  `SwiGLU(fc1_g, fc1_x, fc2)` = fc2(silu(fc1_g x) * fc1_x x) (`timm/layers/mlp.py`) whose
  hidden size is `int(dim * mlp_ratio)` rounded up to `align_to` with no 2/3 factor: we pass
  `mlp_ratio = our_hidden / dim`. `ffn_bias=False`/`proj_bias=False` are expressed by zero biases.
- `timm/models/eva.py` `checkpoint_filter_fn` converts official DINOv3 checkpoints the same
  way (`storage_tokens` -> `reg_token`, `ls1.gamma` -> `gamma_1`, `qkv.bias` -> `q_bias`/`v_bias`,
  dropping `periods`, `bias_mask`, `mask_token`); we write the converted dict ourselves so that
  `model.load_state_dict(sd, strict=True)` works without that filter.

Mapping (ours -> timm), everything else identical: `storage_tokens` -> `reg_token`;
`blocks.i.ls{1,2}.gamma` -> `blocks.i.gamma_{1,2}`; `blocks.i.attn.qkv.bias` -> `attn.q_bias`,
`attn.v_bias`; `blocks.i.mlp.w1/w2/w3` -> `mlp.fc1_g/fc1_x/fc2`; dropped (restored by
`from_timm_state_dict`): `rope_embed.periods` (recomputed from the arch, checked equal on export),
`attn.qkv.bias_mask` (checked standard), `mask_token` (pretraining only: `export_timm` keeps it bit for
bit in the `<stem>.json` and `import_timm` restores it; zeros without that JSON; with `mask_k_bias` the K
third of `qkv.bias`, multiplied by 0, comes back as zeros). Added: zero `proj`/`mlp` biases when
`proj_bias`/`ffn_bias` is False, LayerScale gammas of ones when `layerscale_init` is None
(`timm.create_model` drops None kwargs, so `init_values=1.0`); `from_timm_state_dict` requires them to
be exactly zero / one.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from dinov3_us.errors import CheckpointError
from dinov3_us.layers.ffn_layers import SWIGLU_ALIGN
from dinov3_us.models.vision_transformer import complete_arch, ffn_hidden_features
from dinov3_us.weights.files import read_weights_file, write_weights_file
from dinov3_us.weights.sidecar import read_sidecar, sidecar_path, write_sidecar

logger = logging.getLogger("dinov3_us")

# (embed_dim, depth, num_heads) -> timm size name of its `vit_<size>_patch16_dinov3[_qkvb]` models (MLP FFN).
_TIMM_SIZES = {(192, 12, 3): "tiny", (384, 12, 6): "small", (768, 12, 12): "base", (1024, 24, 16): "large"}
_NO_PLAIN = {"tiny"}  # timm registers only the `_qkvb` tiny model
# What every timm DINOv3 model sets (eva.py), so only differences are passed.
_TIMM_DEFAULTS = dict(patch_size=16, init_values=1e-5, rope_temperature=100.0, num_reg_tokens=4, mlp_ratio=4.0)
# norm_layer -> (python expression for create_model, or None for timm's own LayerNorm(eps=1e-5) default)
_NORMS = {
    "layernormbf16": None,
    "layernorm": "functools.partial(torch.nn.LayerNorm, eps=1e-06)",
    "rmsnorm": "functools.partial(torch.nn.RMSNorm, eps=1e-05)",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_RESERVED = {"format", "model_name", "create_model_kwargs", "create_call", "arch", "mask_token_float32_base64"}


def timm_model_args(arch: dict) -> tuple[str, dict]:
    """The timm model name and `timm.create_model` keyword arguments that build exactly `DinoVisionTransformer(**arch)`.

    A `norm_layer` other than timm's LayerNorm(eps=1e-5) is given as a real callable
    (`functools.partial(torch.nn.LayerNorm, eps=1e-06)` or `...RMSNorm, eps=1e-05)`), so the dict is
    ready for `timm.create_model(name, **kwargs)`; `timm_create_call` spells it out. Raises
    `CheckpointError` naming any setting timm's DINOv3 models cannot express.
    """
    a = complete_arch(arch)
    if a["pos_embed_rope_base"] is None:
        raise CheckpointError(
            "pos_embed_rope_min_period/max_period: timm's Eva passes only rope_temperature (a RoPE base) to its "
            "DINOv3 RoPE, so periods from min/max cannot be expressed"
        )
    if a["pos_embed_rope_normalize_coords"] != "separate":
        raise CheckpointError(
            f"pos_embed_rope_normalize_coords={a['pos_embed_rope_normalize_coords']!r}: timm's Eva always "
            "normalises RoPE coordinates by H and W separately"
        )
    if a["pos_embed_rope_dtype"] != "fp32":
        raise CheckpointError(
            f"pos_embed_rope_dtype={a['pos_embed_rope_dtype']!r}: timm computes RoPE in float32 only, so its "
            "outputs would differ from this backbone's; only pos_embed_rope_dtype='fp32' exports exactly"
        )
    if a["norm_layer"] not in _NORMS:
        raise CheckpointError(f"norm_layer={a['norm_layer']!r}: no timm equivalent (known: {sorted(_NORMS)})")
    if a["ffn_layer"] != "mlp" and a["ffn_layer"] not in SWIGLU_ALIGN:
        raise CheckpointError(f"ffn_layer={a['ffn_layer']!r}: no timm equivalent")
    dim, depth, heads = a["embed_dim"], a["depth"], a["num_heads"]
    qkvb = bool(a["qkv_bias"])
    size = _TIMM_SIZES.get((dim, depth, heads)) if a["ffn_layer"] == "mlp" else None
    if size is None or (size in _NO_PLAIN and not qkvb):
        size = "base"  # a template: the shape is given explicitly below
        shape = dict(embed_dim=dim, depth=depth, num_heads=heads)
    else:
        shape = {}
    name = f"vit_{size}_patch16_dinov3" + ("_qkvb" if qkvb else "")
    kwargs: dict = dict(img_size=a["img_size"], in_chans=a["in_chans"], num_classes=0, global_pool="token")
    kwargs |= shape
    wanted = dict(
        patch_size=a["patch_size"],
        # ours: falsy -> no LayerScale; timm.create_model drops None kwargs, so: gammas of ones (exact identity)
        init_values=float(a["layerscale_init"]) if a["layerscale_init"] else 1.0,
        rope_temperature=float(a["pos_embed_rope_base"]),
        num_reg_tokens=a["n_storage_tokens"],
    )
    hidden = ffn_hidden_features(a)
    if a["ffn_layer"] == "mlp":
        wanted["mlp_ratio"] = float(a["ffn_ratio"])
    else:
        ratio = hidden / dim
        if int(dim * ratio) != hidden:
            raise CheckpointError(f"ffn_layer={a['ffn_layer']!r}: hidden width {hidden} is not int({dim} * ratio)")
        wanted |= dict(mlp_ratio=ratio, swiglu_mlp=True, swiglu_align_to=SWIGLU_ALIGN[a["ffn_layer"]])
    kwargs |= {k: v for k, v in wanted.items() if k not in _TIMM_DEFAULTS or _TIMM_DEFAULTS[k] != v}
    for key, timm_key in (("shift", "rope_shift_coords"), ("jitter", "rope_jitter_coords"),
                          ("rescale", "rope_rescale_coords")):
        value = a[f"pos_embed_rope_{key}_coords"]
        if value is not None:  # training-time augmentations only: same draws as ours, off in eval
            kwargs[timm_key] = float(value)
    if _NORMS[a["norm_layer"]] is not None:
        kwargs["norm_layer"] = _norm_callable(a["norm_layer"])
    return name, kwargs


def _norm_callable(norm_layer: str):
    import functools

    if norm_layer == "layernorm":
        return functools.partial(torch.nn.LayerNorm, eps=1e-06)
    return functools.partial(torch.nn.RMSNorm, eps=1e-05)


def _kwargs_source(arch: dict) -> dict[str, str]:
    """create_model keyword arguments as Python source text (callables as the expression that builds them)."""
    _, kwargs = timm_model_args(arch)
    norm = _NORMS[complete_arch(arch)["norm_layer"]]
    return {k: (norm if k == "norm_layer" else repr(tuple(v) if isinstance(v, list) else v)) for k, v in kwargs.items()}


def timm_create_call(arch: dict) -> str:
    """The Python line that builds the timm model of `arch`, e.g. `timm.create_model("vit_small_...", ...)`.

    Needs `import timm` (and `import functools, torch` when it names a `norm_layer`).
    """
    name, _ = timm_model_args(arch)
    src = _kwargs_source(arch)
    args = ", ".join(f"{k}={v}" for k, v in src.items())
    return f'timm.create_model("{name}", pretrained=False, {args})'


def _our_shapes(arch: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of `DinoVisionTransformer(**arch).state_dict()`, built on the meta device."""
    from dinov3_us.models.vision_transformer import DinoVisionTransformer

    a = complete_arch(arch)
    try:
        model = DinoVisionTransformer(**a, device="meta")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"arch does not build a DinoVisionTransformer: {e}") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _reference_periods(arch: dict) -> torch.Tensor:
    """`rope_embed.periods` as `DinoVisionTransformer(**arch)` computes it."""
    from dinov3_us.dtypes import DTYPES
    from dinov3_us.layers import RopePositionEmbedding

    a = complete_arch(arch)
    rope = RopePositionEmbedding(
        a["embed_dim"], num_heads=a["num_heads"], base=a["pos_embed_rope_base"],
        min_period=a["pos_embed_rope_min_period"], max_period=a["pos_embed_rope_max_period"],
        dtype=DTYPES[a["pos_embed_rope_dtype"]],
    )
    return rope.periods


def _timm_key(key: str) -> list[str] | None:
    """Our key -> the timm keys it becomes ([] when dropped)."""
    if key in ("mask_token", "rope_embed.periods"):
        return []
    if key == "storage_tokens":
        return ["reg_token"]
    m = _BLOCK.match(key)
    if not m:
        return [key]
    i, rest = m.groups()
    if rest == "attn.qkv.bias":
        return [f"blocks.{i}.attn.q_bias", f"blocks.{i}.attn.v_bias"]
    if rest == "attn.qkv.bias_mask":
        return []
    rest = {"ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2"}.get(rest, rest)
    for ours, theirs in (("mlp.w1.", "mlp.fc1_g."), ("mlp.w2.", "mlp.fc1_x."), ("mlp.w3.", "mlp.fc2.")):
        if rest.startswith(ours):
            rest = theirs + rest[len(ours):]
    return [f"blocks.{i}.{rest}"]


def _ones_keys(arch: dict) -> dict[str, int]:
    """timm LayerScale gammas that exist only as ones because our blocks have no LayerScale."""
    a = complete_arch(arch)
    if a["layerscale_init"]:
        return {}
    return {f"blocks.{i}.gamma_{j}": a["embed_dim"] for i in range(a["depth"]) for j in (1, 2)}


def _zero_bias_keys(arch: dict) -> dict[str, int]:
    """timm keys that exist only as zeros because our block has no such bias (proj_bias/ffn_bias False)."""
    a = complete_arch(arch)
    dim, hidden, out = a["embed_dim"], ffn_hidden_features(a), {}
    for i in range(a["depth"]):
        if not a["proj_bias"]:
            out[f"blocks.{i}.attn.proj.bias"] = dim
        if not a["ffn_bias"]:
            names = ("fc1", "fc2") if a["ffn_layer"] == "mlp" else ("fc1_g", "fc1_x", "fc2")
            for n in names:
                out[f"blocks.{i}.mlp.{n}.bias"] = dim if n == "fc2" else hidden
    return out


def timm_state_dict_shapes(arch: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the timm model's state dict for `arch` (what `to_timm_state_dict` produces)."""
    timm_model_args(arch)  # refuses what timm cannot express
    out = {}
    for key, shape in _our_shapes(arch).items():
        for tk in _timm_key(key):
            out[tk] = (shape[0] // 3,) if key.endswith("attn.qkv.bias") else shape
    return out | {k: (n,) for k, n in (_zero_bias_keys(arch) | _ones_keys(arch)).items()}


def _check_keys(sd: Mapping, expected: Mapping[str, tuple], what: str) -> None:
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(f"{k} {tuple(sd[k].shape)} != {expected[k]}" for k in set(sd) & set(expected)
                   if tuple(getattr(sd[k], "shape", ())) != tuple(expected[k]))
    if missing or unexpected or wrong:
        raise CheckpointError(f"{what} does not match the arch: missing {missing}, unexpected {unexpected}, "
                              f"wrong shapes {wrong}")


def to_timm_state_dict(sd: Mapping[str, torch.Tensor], arch: dict) -> dict[str, torch.Tensor]:
    """Our official-key state dict -> the state dict of `timm.create_model(*timm_model_args(arch))` (strict).

    No numeric change: tensors are renamed, `qkv.bias` is split into its Q and V thirds, absent biases
    become zeros and absent LayerScale gammas of ones. Raises `CheckpointError` on missing/unexpected/
    mis-shaped keys, on a non-zero K bias that timm cannot hold, on `rope_embed.periods` other than the
    arch's, or on a non-standard `bias_mask`.
    """
    expected = _our_shapes(arch)
    timm_model_args(arch)
    _check_keys(sd, expected, "state dict")
    a = complete_arch(arch)
    periods = _reference_periods(arch)
    if not torch.equal(sd["rope_embed.periods"].cpu().to(periods.dtype), periods):
        raise CheckpointError("rope_embed.periods differs from the periods the arch computes; timm recomputes them")
    out, bad_k, bad_mask = {}, [], []
    for key, value in sd.items():
        names = _timm_key(key)
        if key.endswith("attn.qkv.bias"):
            q, k, v = value.chunk(3)
            if not a["mask_k_bias"] and bool(k.any()):
                bad_k.append(key)
            out[names[0]], out[names[1]] = q.clone(), v.clone()
        elif key.endswith("attn.qkv.bias_mask"):
            standard = torch.ones_like(value)
            standard[value.shape[0] // 3 : 2 * value.shape[0] // 3] = 0
            if not torch.equal(value, standard):
                bad_mask.append(key)
        elif names:
            out[names[0]] = value
    if bad_k:
        raise CheckpointError(f"non-zero K bias (timm's k_bias is fixed at zero) in {bad_k}")
    if bad_mask:
        raise CheckpointError(f"bias_mask is not the standard [1, 0, 1] thirds in {bad_mask}")
    ref = next(iter(sd.values()))
    for key, n in _zero_bias_keys(arch).items():
        out[key] = torch.zeros(n, dtype=ref.dtype)
    for key, n in _ones_keys(arch).items():
        out[key] = torch.ones(n, dtype=ref.dtype)
    return out


def from_timm_state_dict(sd: Mapping[str, torch.Tensor], arch: dict) -> dict[str, torch.Tensor]:
    """A timm DINOv3 (Eva) state dict -> our official-key state dict for `DinoVisionTransformer(**arch)` (strict).

    Restores what timm does not store: `rope_embed.periods` (from the arch), the K third of `qkv.bias`
    and `bias_mask` (zeros / standard mask), `mask_token` (zeros). Biases our block lacks must be zero in timm.
    """
    _check_keys(sd, timm_state_dict_shapes(arch), "timm state dict")
    nonzero = sorted(k for k in _zero_bias_keys(arch) if bool(sd[k].any()))
    if nonzero:
        raise CheckpointError(f"these timm biases are non-zero but the arch has none (proj_bias/ffn_bias): {nonzero}")
    not_one = sorted(k for k in _ones_keys(arch) if not bool((sd[k] == 1).all()))
    if not_one:
        raise CheckpointError(f"these timm LayerScale gammas are not 1 but the arch has no LayerScale: {not_one}")
    ref = sd["cls_token"]
    out = {}
    for key, shape in _our_shapes(arch).items():
        names = _timm_key(key)
        if key == "rope_embed.periods":
            out[key] = _reference_periods(arch)
        elif key == "mask_token":
            out[key] = torch.zeros(shape, dtype=ref.dtype)
        elif key.endswith("attn.qkv.bias"):
            q, v = sd[names[0]], sd[names[1]]
            out[key] = torch.cat([q, torch.zeros_like(q), v])
        elif key.endswith("attn.qkv.bias_mask"):
            mask = torch.ones(shape, dtype=ref.dtype)
            mask[shape[0] // 3: 2 * shape[0] // 3] = 0
            out[key] = mask
        else:
            out[key] = sd[names[0]]
    return out


def looks_like_timm(sd: Mapping) -> bool:
    """Whether a state dict's key names are those of timm's Eva-based DINOv3 (not ours, not Hugging Face's)."""
    keys = set(sd)
    if any(k.startswith(("embeddings.", "model.", "layer.", "encoder.")) for k in keys):
        return False  # Hugging Face transformers layouts
    if {"mask_token", "rope_embed.periods", "storage_tokens"} & keys or any(".ls1.gamma" in k for k in keys):
        return False  # ours / official
    return {"cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= keys


def export_timm(
    state_dict: Mapping[str, torch.Tensor], arch: dict, output: str | os.PathLike, *, meta: dict | None = None
) -> tuple[Path, str]:
    """Write the timm state dict (`.pth`/`.pt` or `.safetensors`, by suffix) and `<stem>.json`; (path, create call)."""
    path = Path(output)
    if path.suffix not in (".pth", ".pt", ".safetensors"):
        raise CheckpointError(f"{path}: the timm weights file must end in .pth, .pt or .safetensors")
    meta = dict(meta or {})
    clash = sorted(_RESERVED & set(meta))
    if clash:
        raise CheckpointError(f"meta may not set {clash}: export_timm writes them")
    name, _ = timm_model_args(arch)
    call = timm_create_call(arch)
    tensors = to_timm_state_dict(state_dict, arch)
    write_weights_file(tensors, path)
    info = {"format": "timm", "model_name": name, "create_model_kwargs": _kwargs_source(arch), "create_call": call,
            **meta}
    if "mask_token" in state_dict:  # timm has no place for it: kept here, bit for bit, so an import is exact
        info["mask_token_float32_base64"] = base64.b64encode(
            state_dict["mask_token"].detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).decode()
    write_sidecar(path, arch, **info)
    logger.info("wrote %s (%d tensors) for %s", path, len(tensors), call)
    return path, call


def _infer_arch(sd: Mapping[str, torch.Tensor]) -> dict:
    """An arch from a timm state dict's shapes; settings the weights do not hold take timm's DINOv3 defaults."""
    from dinov3_us.models import ARCHS

    if "cls_token" not in sd or "patch_embed.proj.weight" not in sd:
        raise CheckpointError("not a timm DINOv3 state dict: no cls_token / patch_embed.proj.weight")
    dim = sd["cls_token"].shape[-1]
    pw = sd["patch_embed.proj.weight"]
    blocks = {int(m.group(1)) for k in sd if (m := _BLOCK.match(k))}
    depth = max(blocks) + 1 if blocks else 0
    heads = [h for d, n, h in ARCHS.values() if (d, n) == (dim, depth)]
    if len(heads) != 1:
        raise CheckpointError(
            f"embed_dim {dim}, depth {depth}: the number of attention heads is not in the weights; put the "
            "<stem>.json written by export_timm (with its 'arch') beside the weights file"
        )
    arch = dict(embed_dim=dim, depth=depth, num_heads=heads[0], patch_size=pw.shape[-1], in_chans=pw.shape[1],
                n_storage_tokens=sd["reg_token"].shape[1] if "reg_token" in sd else 0,
                qkv_bias="blocks.0.attn.q_bias" in sd, mask_k_bias="blocks.0.attn.q_bias" in sd,
                layerscale_init=1e-5 if "blocks.0.gamma_1" in sd else None,
                norm_layer="layernormbf16" if "norm.bias" in sd else "rmsnorm",
                pos_embed_rope_base=100.0, pos_embed_rope_normalize_coords="separate", pos_embed_rope_dtype="fp32")
    if "blocks.0.mlp.fc1_g.weight" in sd:
        hidden = sd["blocks.0.mlp.fc1_g.weight"].shape[0]
        for ffn, align in SWIGLU_ALIGN.items():
            cand = arch | dict(ffn_layer=ffn, ffn_ratio=1.5 * hidden / dim)
            if hidden % align == 0 and ffn_hidden_features(complete_arch(cand)) == hidden:
                arch = cand
                break
        else:
            raise CheckpointError(f"SwiGLU hidden width {hidden} has no dinov3_us ffn_layer/ffn_ratio equivalent")
    elif "blocks.0.mlp.fc1.weight" in sd:
        arch |= dict(ffn_layer="mlp", ffn_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / dim)
    return arch


def import_timm(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor] | None = None,
                ) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A timm DINOv3 weights file (+ optional `<stem>.json` from `export_timm`) -> (our state dict, arch or None).

    `tensors`: the file's contents when the caller has already read them (not read again). Without the
    JSON the arch is inferred from the shapes (heads from `dinov3_us.models.ARCHS`, other settings timm's
    DINOv3 defaults: LayerNorm eps 1e-5, RoPE base 100, float32 RoPE) and None is returned.
    """
    path = Path(path)
    sd = dict(tensors) if tensors is not None else read_weights_file(path)
    if not looks_like_timm(sd):
        raise CheckpointError(f"{path} does not hold timm DINOv3 keys (e.g. reg_token, blocks.0.gamma_1)")
    info = read_sidecar(path)
    arch = None if info is None else info["arch"]
    state = from_timm_state_dict(sd, arch if arch is not None else _infer_arch(sd))
    if info is not None and info.get("mask_token_float32_base64"):
        raw = np.frombuffer(base64.b64decode(info["mask_token_float32_base64"]), dtype=np.float32)
        if raw.size != state["mask_token"].numel():
            raise CheckpointError(f"{sidecar_path(path)}: mask_token holds {raw.size} values, the model "
                                  f"{state['mask_token'].numel()}")
        state["mask_token"] = torch.from_numpy(raw.copy()).reshape(state["mask_token"].shape)
    return state, arch
