"""Backbones in and out of other libraries: one front door for the three weight formats.

- `official`: our `.pth` / `.safetensors` in the official DINOv3 key layout, `<stem>.json` beside it with
  the architecture (`checkpointer.export.save_backbone`);
- `hf`: a Hugging Face transformers folder (`config.json`, `model.safetensors`, `preprocessor_config.json`,
  model card) that `transformers.AutoModel.from_pretrained(folder)` loads as `DINOv3ViTModel`
  (`dinov3_us.interop.hf`);
- `timm`: a state dict for timm's `vit_*_patch16_dinov3*` models and `<stem>.json` with the
  `timm.create_model(...)` call that builds the matching model (`dinov3_us.interop.timm`).

`read_backbone(path)` detects the format and returns the official-layout state dict (every mapping is
strict: missing, unexpected or mis-shaped keys are a `CheckpointError`), so `student.pretrained_weights`,
`hub.dinov3_*(weights=...)` and the eval tools' `--pretrained-weights` take all three.
`export_backbone(...)` writes any of them (`tools/convert_checkpoint.py --format`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from dinov3_us.errors import CheckpointError

logger = logging.getLogger("dinov3_us")

FORMATS = ("official", "hf", "timm")


def read_backbone(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None, str]:
    """(official-layout state dict, architecture kwargs or None, format) of a weights file or an HF folder.

    The architecture comes from the HF `config.json`, the timm or official `<stem>.json`; None when only
    the tensors are known (an official release `.pth`: the caller infers it from the shapes).
    """
    from dinov3_us.interop.hf import import_hf, is_hf
    from dinov3_us.interop.timm import import_timm, looks_like_timm
    from dinov3_us.models.weights import read_weights_file

    path = Path(path)
    if is_hf(path):
        state, arch = import_hf(path)
        logger.info("weights: %s is a Hugging Face transformers DINOv3 checkpoint; mapped %d tensors to the official "
                    "layout", path, len(state))
        return state, arch, "hf"
    raw = read_weights_file(path)
    if looks_like_timm(raw):
        state, arch = import_timm(path, raw)
        logger.info("weights: %s is a timm DINOv3 state dict; mapped %d tensors to the official layout", path,
                    len(state))
        return state, arch, "timm"
    return raw, _official_arch(path), "official"


def _official_arch(path: Path) -> dict | None:
    meta = path.with_suffix(".json")
    if not meta.is_file():
        return None
    try:
        return dict(json.loads(meta.read_text())["arch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def export_backbone(state: dict[str, torch.Tensor], arch: dict, output: str | os.PathLike, fmt: str, *,
                    meta: dict | None = None) -> tuple[Path, str]:
    """Write an official-layout backbone in format `fmt`; (what was written, the line that loads it elsewhere).

    Raises:
        CheckpointError: an unknown format, or an architecture feature the target cannot express.
    """
    meta = dict(meta or {})
    if fmt == "official":
        from dinov3_us.checkpointer.export import save_backbone

        info = {k: v for k, v in meta.items() if k in ("iteration", "source", "which", "selected")}
        path = save_backbone(state, output, arch, **info)
        return path, f'dinov3_us.hub.dinov3_vits16(weights="{path}")  # or any dinov3_us tool\'s --pretrained-weights'
    if fmt == "hf":
        from dinov3_us.interop.hf import export_hf

        path = export_hf(state, arch, output, meta=meta)
        return path, f'transformers.AutoModel.from_pretrained("{path}")'
    if fmt == "timm":
        from dinov3_us.interop.timm import export_timm

        path, call = export_timm(state, arch, output, meta=meta)
        return path, f'model = {call}; model.load_state_dict(torch.load("{path}"), strict=True)'
    raise CheckpointError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")


def weights_digest_file(path: str | os.PathLike) -> Path:
    """The file whose sha256 names a backbone: the file itself, or an HF folder's `model.safetensors`."""
    path = Path(path)
    return path / "model.safetensors" if path.is_dir() else path
