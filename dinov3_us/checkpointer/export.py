"""Consolidated backbone files: the teacher's weights in the official key format plus its architecture.

`OUT/eval/training_<it>/teacher_checkpoint.pth` (a plain state dict, loadable with `strict=True` by
`DinoVisionTransformer` and by the official code) and `teacher_checkpoint.json` beside it
(`{"arch": DinoVisionTransformer kwargs, "iteration": ..., "source": ...}`), written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from dinov3_us.fileio import atomic_path, write_atomic

logger = logging.getLogger("dinov3_us")


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of `module` on CPU (collective: call on every rank; rank 0 gets the tensors)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)


def save_backbone(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, arch: dict, **info) -> Path:
    """Write weights (`.pth`, or `.safetensors` if that is the suffix) and `<stem>.json` beside them."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
    else:
        with atomic_path(path) as tmp:
            torch.save(tensors, tmp)
    write_atomic(path.with_suffix(".json"), json.dumps({"arch": arch, **info}, indent=2))
    logger.info("wrote %s (%d tensors) and its architecture %s", path, len(tensors), path.with_suffix(".json").name)
    return path
