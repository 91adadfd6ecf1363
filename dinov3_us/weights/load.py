"""Load backbone weights strictly, with explicit and logged adaptations only.

Official DINOv3 code loads eval weights with `strict=False` after `str.replace` on prefixes. Here
every key must match: the only adaptations are named ones (the training-checkpoint wrappings undone by
`dinov3_us.weights.formats.unwrap_state_dict`, RGB -> grayscale patch embedding), each logged; any
other mismatch raises `CheckpointError` listing the missing, unexpected and wrongly shaped keys.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from dinov3_us.errors import CheckpointError
from dinov3_us.layers.patch_embed import rgb_to_gray_patch_weight
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.weights.arch import check_named_arch, infer_arch
from dinov3_us.weights.formats import read_backbone_meta, read_state_dict, unwrap_state_dict
from dinov3_us.weights.sidecar import sidecar_path

logger = logging.getLogger("dinov3_us")

PATCH_WEIGHT_KEY = "patch_embed.proj.weight"


def adapt_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Apply the named adaptations: `unwrap_state_dict`, then sum RGB patch filters for 1-channel models."""
    state = unwrap_state_dict(state)
    target = model.state_dict().get(PATCH_WEIGHT_KEY)
    weight = state.get(PATCH_WEIGHT_KEY)
    if target is not None and weight is not None and target.shape[1] == 1 and weight.ndim == 4 and weight.shape[1] == 3:
        logger.info("weights: summing the RGB filters of %s into one grayscale channel", PATCH_WEIGHT_KEY)
        state[PATCH_WEIGHT_KEY] = rgb_to_gray_patch_weight(weight)
    return state


def check_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module, source: str = "weights") -> None:
    """Raise `CheckpointError` unless `state` has exactly the model's keys with the model's shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} in {source}, {tuple(expected[k].shape)} in the model"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"{source} does not match the model ({type(model).__name__}):"]
        lines += [f"  missing keys ({len(missing)}): {missing}"] if missing else []
        lines += [f"  unexpected keys ({len(unexpected)}): {unexpected}"] if unexpected else []
        lines += [f"  shape mismatches ({len(shapes)}): " + "; ".join(shapes)] if shapes else []
        raise CheckpointError("\n".join(lines))


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> int:
    """`adapt_state_dict`, `check_state_dict`, then `model.load_state_dict(strict=True)`; the tensor count."""
    state = adapt_state_dict(state, model)
    check_state_dict(state, model, source)
    model.load_state_dict(state, strict=True)
    return len(state)


def load_backbone_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> None:
    """Load `source` (path or URL in any format, or a state dict) into `model` with `strict=True` after the
    named adaptations."""
    name = "state dict" if isinstance(source, Mapping) else str(source)
    state = source if isinstance(source, Mapping) else read_state_dict(source)
    n = load_state_dict_strict(model, state, name)
    logger.info("loaded %d tensors from %s", n, name)


def build_backbone(path: str | os.PathLike, *, arch_name: str | None = None, img_size: int | None = None,
                   in_chans: int | None = None, **model_kwargs) -> tuple[DinoVisionTransformer, dict, str, dict]:
    """Build the `DinoVisionTransformer` that the weights at `path` (any format) hold and load them strictly.

    The architecture comes from, in this order: the official file's sidecar, the HF / timm format's
    own record, else the state dict's shapes (`infer_arch`). `arch_name` (an `ARCHS` name) is checked
    against it; `img_size` and `in_chans` override it (1 channel with RGB weights sums the patch
    filters); `model_kwargs` (e.g. `drop_path_rate`, `attention_backend`) go to the constructor.
    Returns (model, architecture kwargs, kind: exported | hf | timm | official, sidecar information).
    """
    state, arch, fmt, meta = read_backbone_meta(path)
    if meta is not None:
        kwargs = dict(meta["arch"])
        kind, info = "exported", {k: v for k, v in meta.items() if k != "arch"}
        logger.info("architecture from %s", sidecar_path(path))
    elif arch is not None:
        kwargs, kind, info = dict(arch), fmt, {"format": fmt}
        logger.info("architecture from the %s checkpoint %s", fmt, path)
    else:
        kwargs, kind, info = infer_arch(state), "official", {}
        logger.info("architecture inferred from the state dict of %s: %s", os.path.basename(path),
                    {k: kwargs[k] for k in ("embed_dim", "depth", "num_heads", "n_storage_tokens", "ffn_layer")})
    check_named_arch(arch_name, kwargs, str(path))
    if img_size is not None:
        kwargs["img_size"] = img_size
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    try:
        model = DinoVisionTransformer(**kwargs, **model_kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build its architecture {kwargs}: {e}") from None
    load_state_dict_strict(model, state, str(path))
    return model, kwargs, kind, info
