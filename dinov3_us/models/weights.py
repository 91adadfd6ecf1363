"""Load backbone weights strictly, with explicit and logged adaptations only.

Official DINOv3 code loads eval weights with `strict=False` after `str.replace` on prefixes. Here
every key must match: the only adaptations are named ones (a `backbone.` prefix from a training
checkpoint, RGB -> grayscale patch embedding), each logged; any other mismatch raises
`CheckpointError` listing the missing, unexpected and wrongly shaped keys.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from dinov3_us.errors import CheckpointError
from dinov3_us.layers.patch_embed import rgb_to_gray_patch_weight

logger = logging.getLogger("dinov3_us")

PATCH_WEIGHT_KEY = "patch_embed.proj.weight"


def sniff_format(path: str | os.PathLike) -> str | None:
    """The weights format a file's first bytes announce: "torch-zip", "torch-pickle", "safetensors", "empty" or None."""
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):  # torch.save's default zip container
        return "torch-zip"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # a pickle (torch's legacy format)
        return "torch-pickle"
    if len(head) == 9 and 0 < int.from_bytes(head[:8], "little") < 1 << 30 and head[8:9] == b"{":
        return "safetensors"  # an 8-byte header length, then the JSON header
    return None


def _unreadable(source: str, err: Exception) -> str:
    """The one-line reason `source` could not be read: not a weights file at all, or a damaged one."""
    fmt = sniff_format(source)
    size = os.path.getsize(source)
    if fmt is None:
        return f"{source} is not a PyTorch or safetensors file ({size} bytes)"
    if fmt == "empty":
        return f"{source} is truncated/corrupt: empty file (0 bytes)"
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if "Weights only load failed" in reason:
        return (f"{source} holds Python objects besides tensors (torch.load(weights_only=True) refuses them): "
                "save a plain state dict")
    reason = reason.split(". ")[0][:160] or type(err).__name__
    return f"{source} is truncated/corrupt: {reason} ({size} bytes)"


def read_state_dict(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The official-layout state dict of an http(s) URL, an official / timm `.pth` or `.safetensors`, or an HF folder.

    Hugging Face transformers and timm weights are detected and mapped strictly (`dinov3_us.interop`).
    """
    if str(source).startswith(("http://", "https://")):
        return torch.hub.load_state_dict_from_url(str(source), map_location="cpu", weights_only=True)
    from dinov3_us.interop import read_backbone  # interop maps onto this package's models

    return read_backbone(source)[0]


def read_weights_file(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth`/`.pt` file (weights only) or a `.safetensors` file, as they are stored."""
    source = str(source)
    if not os.path.isfile(source):
        raise CheckpointError(f"weights file {source} does not exist")
    if source.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{source}: reading .safetensors needs `pip install safetensors`") from None
        try:
            return load_file(source)
        except Exception as e:  # SafetensorError, OSError: the file is not what its name says
            raise CheckpointError(_unreadable(source, e)) from None
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises RuntimeError, KeyError, EOFError, OSError... on a bad file
        raise CheckpointError(_unreadable(source, e)) from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source} holds a {type(state).__name__}, expected a state dict")
    return dict(state)


def adapt_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Apply the named adaptations: strip a `backbone.` prefix, sum RGB patch filters for 1-channel models."""
    state = dict(state)
    if state and all(k.startswith("backbone.") for k in state):
        logger.info("weights: stripping the 'backbone.' prefix of %d keys (training-checkpoint format)", len(state))
        state = {k[len("backbone.") :]: v for k, v in state.items()}
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


def load_backbone_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> None:
    """Load `source` (path, URL or state dict) into `model` with `strict=True` after the named adaptations."""
    name = "state dict" if isinstance(source, Mapping) else str(source)
    state = source if isinstance(source, Mapping) else read_state_dict(source)
    state = adapt_state_dict(state, model)
    check_state_dict(state, model, name)
    model.load_state_dict(state, strict=True)
    logger.info("loaded %d tensors from %s", len(state), name)
