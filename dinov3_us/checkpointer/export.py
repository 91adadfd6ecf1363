"""Whole tensors out of sharded state: of a live (FSDP2 or plain) module, and of a saved DCP checkpoint.

`full_state_dict(module)` gathers a module's unsharded state dict on CPU (collective); `iter_tensors`
reads a checkpoint folder's tensors under a prefix one at a time without a process group, after
checking that the checkpoint is complete and undamaged. What becomes of the tensors (a weights file
in some format) is `dinov3_us.weights`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from dinov3_us.checkpointer.checkpointer import damaged_files, invalid_reason
from dinov3_us.errors import CheckpointError


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of `module` on CPU (collective: call on every rank; rank 0 gets the tensors)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)


def _tensor_keys(ckpt: Path) -> dict[str, TensorStorageMetadata]:
    metadata = FileSystemReader(str(ckpt)).read_metadata()
    return {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def iter_tensors(ckpt: str | os.PathLike, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key without `prefix`, tensor) for every checkpoint tensor under `prefix`, one read at a time."""
    ckpt = Path(ckpt)
    reason = invalid_reason(ckpt)
    if reason:
        raise CheckpointError(f"{ckpt} is not a complete checkpoint: {reason}")
    damaged = damaged_files(ckpt)
    if damaged:
        raise CheckpointError(f"{ckpt} is damaged: {', '.join(damaged)} do not match the CRC-32 in its COMPLETE.json")
    reader = FileSystemReader(str(ckpt))
    for key, meta in sorted(_tensor_keys(ckpt).items()):
        if not key.startswith(prefix):
            continue
        tensor = torch.empty(meta.size, dtype=meta.properties.dtype)
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({key: tensor}, storage_reader=reader, no_dist=True)
        yield key[len(prefix):], tensor
