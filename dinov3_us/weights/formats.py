"""The three formats of a backbone on disk, detected on reading and chosen on writing.

- `official`: our `.pth` / `.safetensors` in the official DINOv3 key layout (also the official release
  files), with the `<stem>.json` sidecar (`dinov3_us.weights.sidecar`) when we wrote it;
- `hf`: a Hugging Face transformers folder (`config.json`, `model.safetensors`, `preprocessor_config.json`,
  model card) that `transformers.AutoModel.from_pretrained(folder)` loads as `DINOv3ViTModel`
  (`dinov3_us.weights.hf`);
- `timm`: a state dict for timm's `vit_*_patch16_dinov3*` models and the sidecar with the
  `timm.create_model(...)` call that builds the matching model (`dinov3_us.weights.timm`).

`read_backbone(path)` detects the format and returns the official-layout state dict (every mapping is
strict: missing, unexpected or mis-shaped keys are a `CheckpointError`); `export_backbone(...)` writes
any of them. Training-checkpoint wrappings (a `{"teacher": sd}` container, DINO/iBOT heads beside
`backbone.` keys, the `backbone.` prefix) are undone in one place, `unwrap_state_dict`, each logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from dinov3_us.errors import CheckpointError
from dinov3_us.fileio import link_atomic
from dinov3_us.weights.files import read_weights_file, write_weights_file
from dinov3_us.weights.hf import export_hf, import_hf, is_hf
from dinov3_us.weights.sidecar import read_sidecar, sidecar_path, write_sidecar
from dinov3_us.weights.timm import export_timm, import_timm, looks_like_timm

logger = logging.getLogger("dinov3_us")

FORMATS = ("official", "hf", "timm")
CONTAINER_KEYS = ("teacher", "model", "state_dict")
HEAD_PREFIXES = ("dino_head.", "ibot_head.")
BACKBONE_PREFIX = "backbone."
# the sidecar keys an official export keeps from the card information (`export_backbone(meta=...)`)
OFFICIAL_INFO = ("iteration", "source", "which", "selected")


def unwrap_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Named unwrapping of training checkpoints: `{"teacher": sd}` -> sd; heads dropped beside `backbone.` keys;
    the `backbone.` prefix stripped when every key has it. Each step is logged; anything else is left as it is."""
    state = dict(state)
    for key in CONTAINER_KEYS:
        if set(state) == {key} and isinstance(state[key], Mapping):
            logger.info("weights: using the %r entry of the checkpoint", key)
            state = dict(state[key])
    if any(k.startswith(BACKBONE_PREFIX) for k in state) and any(k.startswith(HEAD_PREFIXES) for k in state):
        heads = [k for k in state if k.startswith(HEAD_PREFIXES)]
        logger.info("weights: ignoring %d DINO/iBOT head tensors of a training checkpoint", len(heads))
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    if state and all(k.startswith(BACKBONE_PREFIX) for k in state):
        logger.info("weights: stripping the %r prefix of %d keys (training-checkpoint format)", BACKBONE_PREFIX,
                    len(state))
        state = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items()}
    return state


def read_backbone_meta(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None, str, dict | None]:
    """`read_backbone` plus the official file's sidecar (None for the other formats or without one)."""
    path = Path(path)
    if is_hf(path):
        state, arch = import_hf(path)
        logger.info("weights: %s is a Hugging Face transformers DINOv3 checkpoint; mapped %d tensors to the official "
                    "layout", path, len(state))
        return state, arch, "hf", None
    raw = unwrap_state_dict(read_weights_file(path))
    if looks_like_timm(raw):
        state, arch = import_timm(path, raw)
        logger.info("weights: %s is a timm DINOv3 state dict; mapped %d tensors to the official layout", path,
                    len(state))
        return state, arch, "timm", None
    meta = read_sidecar(path)
    return raw, None if meta is None else dict(meta["arch"]), "official", meta


def read_backbone(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None, str]:
    """(official-layout state dict, architecture kwargs or None, format) of a weights file or an HF folder.

    The architecture comes from the HF `config.json`, the timm or official sidecar; None when only the
    tensors are known (an official release `.pth`: `dinov3_us.weights.arch.infer_arch` reads the shapes).
    """
    state, arch, fmt, _ = read_backbone_meta(path)
    return state, arch, fmt


def read_state_dict(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The official-layout state dict of an http(s) URL, an official/timm `.pth` or `.safetensors`, or an HF folder."""
    if str(source).startswith(("http://", "https://")):
        return torch.hub.load_state_dict_from_url(str(source), map_location="cpu", weights_only=True)
    return read_backbone(source)[0]


def save_backbone(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, arch: dict, **info) -> Path:
    """Write an official-layout backbone (`.pth`, or `.safetensors` if that is the suffix) and its sidecar.

    An old sidecar is removed first: a crash between the two writes leaves weights without a sidecar (which
    nobody takes for a given iteration), never a sidecar that describes other weights."""
    sidecar_path(path).unlink(missing_ok=True)
    path = write_weights_file(state_dict, path)
    write_sidecar(path, arch, **info)
    logger.info("wrote %s (%d tensors) and its architecture %s", path, len(state_dict), sidecar_path(path).name)
    return path


def link_backbone(existing: str | os.PathLike, path: str | os.PathLike, arch: dict, **info) -> Path:
    """`path` as a second name of the backbone file `existing` (a hard link, `dinov3_us.fileio.link_atomic`) with a
    sidecar of its own (`info`); the old sidecar is removed first, as in `save_backbone`."""
    sidecar_path(path).unlink(missing_ok=True)
    path = link_atomic(existing, path)
    write_sidecar(path, arch, **info)
    return path


def export_backbone(state: dict[str, torch.Tensor], arch: dict, output: str | os.PathLike, fmt: str, *,
                    meta: dict | None = None) -> tuple[Path, str]:
    """Write an official-layout backbone in format `fmt`; (what was written, the line that loads it elsewhere).

    Raises:
        CheckpointError: an unknown format, or an architecture feature the target cannot express.
    """
    meta = dict(meta or {})
    if fmt == "official":
        path = save_backbone(state, output, arch, **{k: v for k, v in meta.items() if k in OFFICIAL_INFO})
        return path, f'dinov3_us.hub.dinov3_vits16(weights="{path}")  # or any dinov3_us tool\'s --pretrained-weights'
    if fmt == "hf":
        path = export_hf(state, arch, output, meta=meta)
        return path, f'transformers.AutoModel.from_pretrained("{path}")'
    if fmt == "timm":
        path, call = export_timm(state, arch, output, meta=meta)
        return path, f'model = {call}; model.load_state_dict(torch.load("{path}"), strict=True)'
    raise CheckpointError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
