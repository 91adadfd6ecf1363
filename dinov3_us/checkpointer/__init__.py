"""Checkpoints of a training run: sharded DCP saves with atomic commit, keep policy and resume.

`CheckpointManager` saves/loads `Stateful` objects: `ModelOptimizerState` (model + optimizer, plain or
FSDP2), `TrainState` (loop position) and, per rank, `RNGState`. `export` reads whole tensors back out of
sharded state (a live module's, a saved checkpoint's). DCP checkpoints only: backbone weights files, in any
format, are `dinov3_us.weights`.
"""

from dinov3_us.checkpointer.checkpointer import (
    MARKER,
    CheckpointManager,
    NoUsableCheckpointError,
    damaged_files,
    invalid_reason,
)
from dinov3_us.checkpointer.rng import RNGState, capture_rng_state, restore_rng_state
from dinov3_us.checkpointer.states import ModelOptimizerState, TrainState

__all__ = [
    "MARKER",
    "CheckpointManager",
    "ModelOptimizerState",
    "NoUsableCheckpointError",
    "RNGState",
    "TrainState",
    "capture_rng_state",
    "damaged_files",
    "invalid_reason",
    "restore_rng_state",
]
