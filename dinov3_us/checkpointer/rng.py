"""Capture and restore the random-number generators of one process, for exact resume.

The state covers python's `random`, numpy's global (legacy) generator, torch's CPU generator and,
when CUDA is initialised, the generator of the *current* CUDA device only (each rank owns one
device; asking for every device would create a CUDA context on all of them). RNG states belong to
one rank and cannot be resharded: the checkpoint manager writes them per rank (`rank<r>.pt`).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

from dinov3_us.errors import CheckpointError

logger = logging.getLogger("dinov3_us")

_KEYS = ("python", "numpy", "torch")


def capture_rng_state() -> dict[str, Any]:
    """Return the current RNG states of this process (python, numpy, torch CPU, current CUDA device)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set this process's generators to `state` (as returned by `capture_rng_state`).

    Raises:
        CheckpointError: `state` lacks one of the python/numpy/torch entries.
    """
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise CheckpointError(f"RNG state: missing entries {missing} (has {sorted(state)})")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"], torch.cuda.current_device())
        else:
            logger.warning("RNG state: the checkpoint holds a CUDA generator state but CUDA is unavailable; skipped")


class RNGState:
    """Stateful view of the process RNGs: `state_dict()` captures, `load_state_dict()` restores.

    Pass it in `rank_states` of `CheckpointManager.save/load` (never in the resharded `states`).
    """

    def capture(self) -> dict[str, Any]:
        """Return the current RNG states (see `capture_rng_state`)."""
        return capture_rng_state()

    def restore(self, state: dict[str, Any]) -> None:
        """Restore RNG states captured by `capture` (see `restore_rng_state`)."""
        restore_rng_state(state)

    def state_dict(self) -> dict[str, Any]:
        """Alias of `capture`, for the `Stateful` protocol."""
        return self.capture()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Alias of `restore`, for the `Stateful` protocol."""
        self.restore(state_dict)
