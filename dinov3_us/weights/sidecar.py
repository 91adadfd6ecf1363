"""The `<stem>.json` sidecar of a backbone weights file: its one reader and its one writer.

`OUT/teacher.pth` has `OUT/teacher.json` beside it, `x.safetensors` has `x.json`. Contract:
a JSON object with an `arch` object (the `DinoVisionTransformer` keyword arguments that build the
backbone whose weights the file holds) and optional information keys:

    iteration  int   the training iteration the weights were taken at
    source     str   the checkpoint, run or file they came from
    which      str   "teacher" or "student"
    selected   str   why this checkpoint (e.g. the best on the downstream monitor)
    format     str   "timm" for a timm state dict (then also model_name, create_model_kwargs,
                     create_call and mask_token_float32_base64: see `dinov3_us.weights.timm`)

A weights file without a sidecar is valid (an official release `.pth`: its architecture is inferred
from the shapes, `dinov3_us.weights.arch`). A sidecar that exists but is not such an object is an error
naming the file, whoever reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dinov3_us.errors import CheckpointError
from dinov3_us.fileio import write_json_atomic


def sidecar_path(weights: str | os.PathLike) -> Path:
    """`<stem>.json` beside `weights`."""
    return Path(weights).with_suffix(".json")


def write_sidecar(weights: str | os.PathLike, arch: dict, **info) -> Path:
    """Write `{"arch": arch, **info}` atomically beside `weights`; returns the sidecar's path."""
    if "arch" in info:
        raise CheckpointError("sidecar information may not set 'arch': it is the architecture argument")
    return write_json_atomic(sidecar_path(weights), {"arch": dict(arch), **info})


def read_sidecar(weights: str | os.PathLike) -> dict | None:
    """The sidecar of `weights` as a dict (with an `arch` dict), or None when there is none.

    Raises:
        CheckpointError: the sidecar exists but is unreadable, not JSON, or has no `arch` object.
    """
    path = sidecar_path(weights)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable architecture file ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), dict):
        raise CheckpointError(f"{path}: expected {{'arch': {{DinoVisionTransformer kwargs}}, ...}}")
    return meta


def sidecar_arch(weights: str | os.PathLike) -> dict | None:
    """The `arch` of `weights`' sidecar, or None without a sidecar (errors as `read_sidecar`)."""
    meta = read_sidecar(weights)
    return None if meta is None else dict(meta["arch"])


def trained_img_size(weights: str | os.PathLike) -> int | None:
    """The input size the backbone in `weights` was trained at (`arch.img_size` of its sidecar), or None."""
    arch = sidecar_arch(weights)
    size = arch.get("img_size") if arch is not None else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def teacher_iteration(weights: str | os.PathLike) -> int | None:
    """The iteration a teacher weights file was converted from (its sidecar's `iteration`), or None.

    None when the file or its sidecar is missing, when the sidecar names the student (`which`), or
    when it records no integer iteration. A sidecar that is not JSON is an error (`read_sidecar`).
    """
    if not Path(weights).is_file():
        return None
    meta = read_sidecar(weights)
    if meta is None or meta.get("which", "teacher") != "teacher":
        return None
    iteration = meta.get("iteration")
    return iteration if isinstance(iteration, int) and not isinstance(iteration, bool) else None
