"""Stateful wrappers that the checkpoint manager saves with DCP (resharded across process counts).

- `ModelOptimizerState`: a model (plain or FSDP2-sharded) and optionally its optimizer, through
  `torch.distributed.checkpoint.state_dict` with full fqn keys; the optimizer state is flattened
  (`state.<fqn>.<name>`, `param_groups.<fqn>.<hyperparameter>`), so it does not depend on the
  order or grouping of parameters.
- `TrainState`: iteration, images seen and a picklable `extra` dict. It is *global*: every rank
  must hold the same values; the copy of rank 0 is written.

A parameter that never had a gradient before a save (e.g. a `mask_token` not used yet) has no
optimizer state in the checkpoint. Loading leaves it without state, exactly as in the run that
saved it (AdamW then starts its moments at its first gradient, as it would have done).
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    _get_fqns,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

from dinov3_us.errors import CheckpointError

_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
_STATE, _GROUPS = "state.", "param_groups."


def _owner(rest: str, fqns: set[str]) -> str | None:
    """The parameter fqn that `rest` (`<fqn>.<name>[.<sub>...]`) starts with, or None."""
    parts = rest.split(".")
    for i in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in fqns:
            return candidate
    return None


class ModelOptimizerState(Stateful):
    """A model and its optimizer (or None) as one DCP state: `{"model": ..., "optim": ...}`.

    Works with FSDP2 (`fully_shard`, DTensor values: each rank saves and loads its shards) and with
    plain single-process models. Loading resets the optimizer's gradients (set to None).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None):
        self.model = model
        self.optimizer = optimizer
        self._placeholders: dict[str, Any] = {}
        self._stateless: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        """The state to save. Saving changes neither the model nor the optimizer."""
        if self.optimizer is None:
            return {"model": get_model_state_dict(self.model, options=_OPTIONS)}
        was_empty = not self.optimizer.state
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=_OPTIONS)
        if was_empty:
            # DSD fills an empty optimizer state with a zero-lr step; undo it, or the saving run's
            # AdamW step counters would be one ahead of a run that did not save.
            self.optimizer.state.clear()
            optim_sd = {k: v for k, v in optim_sd.items() if not k.startswith(_STATE)}
        return {"model": model_sd, "optim": optim_sd}

    def load_target(self, checkpoint_keys: set[str]) -> dict[str, Any]:
        """The state dict to load into, given the keys (relative to this state) that the checkpoint has.

        Every optimizer state entry of a parameter that has *no* state in the checkpoint is left out
        (and that parameter is left without optimizer state by `load_state_dict`); any other
        difference is reported as missing/unexpected by the manager.
        """
        self._placeholders, self._stateless = {}, set()
        if self.optimizer is None:
            return {"model": get_model_state_dict(self.model, options=_OPTIONS)}
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.state.clear()  # DSD then initialises every state (zero-lr step) to load into
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=_OPTIONS)
        fqns = {k[len(_GROUPS) :].rsplit(".", 1)[0] for k in optim_sd if k.startswith(_GROUPS)}
        prefix = "optim." + _STATE
        with_state = {_owner(k[len(prefix) :], fqns) for k in checkpoint_keys if k.startswith(prefix)}
        self._stateless = fqns - with_state
        for key in [k for k in optim_sd if k.startswith(_STATE)]:
            if _owner(key[len(_STATE) :], fqns) in self._stateless:
                self._placeholders[key] = optim_sd.pop(key)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict (from `load_target`, filled by DCP) into the model and optimizer."""
        if self.optimizer is None:
            set_model_state_dict(self.model, state_dict["model"], options=_OPTIONS)
            return
        optim_sd = {**state_dict["optim"], **self._placeholders}
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state_dict["model"], optim_state_dict=optim_sd,
            options=_OPTIONS,
        )
        if self._stateless:
            by_fqn = {}
            for name, param in self.model.named_parameters():
                for fqn in _get_fqns(self.model, name):
                    by_fqn[fqn] = param
            for fqn in self._stateless:
                self.optimizer.state.pop(by_fqn[fqn], None)
        self._placeholders, self._stateless = {}, set()

    @property
    def stateless_parameters(self) -> set[str]:
        """Fqns left without optimizer state by the last load (set between `load_target` and `load_state_dict`)."""
        return set(self._stateless)


class TrainState(Stateful):
    """Loop position: `iteration`, `images_seen` and `extra` (any picklable dict, identical on all ranks).

    `extra` is stored as one pickled blob (rank 0's), so its structure may change between save and
    load. Per-rank values must be gathered into it (the trainer keeps every rank's skipped-sample
    counts there) or saved in `rank_states` (RNG); a value only this rank holds is otherwise lost.
    """

    def __init__(self, iteration: int = 0, images_seen: int = 0, extra: dict[str, Any] | None = None):
        self.iteration = iteration
        self.images_seen = images_seen
        self.extra: dict[str, Any] = dict(extra or {})

    def state_dict(self) -> dict[str, Any]:
        """`{"iteration", "images_seen", "extra"}` with `extra` pickled to bytes."""
        return {"iteration": int(self.iteration), "images_seen": int(self.images_seen),
                "extra": pickle.dumps(self.extra, protocol=pickle.HIGHEST_PROTOCOL)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from `state_dict()` output.

        Raises:
            CheckpointError: `extra` cannot be unpickled (a class it refers to no longer exists).
        """
        self.iteration = int(state_dict["iteration"])
        self.images_seen = int(state_dict["images_seen"])
        try:
            self.extra = pickle.loads(state_dict["extra"])
        except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing here
            raise CheckpointError(f"train state: cannot unpickle `extra`: {type(e).__name__}: {e}") from e
