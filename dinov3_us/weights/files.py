"""Weights files as bytes on disk: what a file is, its tensors, writing them, its digest.

`.pth` / `.pt` files are read with `torch.load(weights_only=True)` (plain state dicts only),
`.safetensors` with `safetensors`. A file that is neither, or damaged, is a `CheckpointError` in one
line saying which (`sniff_format` tells an empty or foreign file from a truncated one). Writes are
atomic (`dinov3_us.fileio.atomic_path`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from dinov3_us.errors import CheckpointError
from dinov3_us.fileio import atomic_path


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


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a copy of it where it is a view of a larger storage."""
    whole = t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    return t if whole else t.clone()


def write_weights_file(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write `tensors` (detached, on CPU, contiguous, each owning exactly its bytes) atomically: `.safetensors`
    by suffix, else `torch.save`. The same values give the same bytes whatever storage they were views of (a
    tensor gathered from uneven FSDP shards lives in a padded buffer, which torch.save would write whole)."""
    path = Path(path)
    tensors = {k: _own_storage(v.detach().cpu().contiguous()) for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata={"format": "pt"})
        else:  # through a file object: torch.save names the zip's records after a path, so the same tensors
            with open(tmp, "wb") as f:  # would give other bytes under each temporary name
                torch.save(tensors, f)
    return path


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_digest_file(path: str | os.PathLike) -> Path:
    """The file whose sha256 names a backbone: the file itself, or an HF folder's `model.safetensors`."""
    path = Path(path)
    return path / "model.safetensors" if path.is_dir() else path
