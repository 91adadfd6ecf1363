"""`teacher.temp_control=auto`: a teacher temperature that adapts to how far apart the teacher puts the images.

Why (docs/selfdistill_onset.md): on look-alike ultrasound the teacher's CLS logits of two images
differ by a small fraction of the official temperature (0.04-0.07), so Sinkhorn-Knopp returns uniform targets
and the DINO / iBOT terms carry nothing. What starts self-distillation is the teacher separating the images by
a few temperatures: the controller holds that spread at a set point while the official schedule cannot.

The rule, after each step, from that step's statistics averaged over all ranks (so every rank computes the
same temperature):

- `spread`: the standard deviation over the batch of the teacher's logits before the temperature (the
  `teacher_logit_std` metric times the temperature used), smoothed with an exponential average (`SMOOTHING`);
- the next temperature is `spread / teacher.temp_spread`, bounded above by the official schedule's value at
  that iteration and below by `teacher.min_temp`, and lowered by at most `MAX_DOWN` per step (a spread of
  exactly 0, identical logits for every image, leaves the official value: no temperature separates them);
- a guard: when the batch-averaged targets concentrate (`teacher_batch_entropy` below
  `GUARD_BATCH_ENTROPY`, a prototype starting to dominate) or the targets sharpen below
  `TARGET_ENTROPY_FLOOR` (of ln K, as when the crops of one image are pushed apart), the temperature
  rises by `BACKOFF` instead.

So the temperature is never above the official one, and equals it exactly wherever the teacher already puts
the images `temp_spread` official temperatures apart: a varied pool keeps the official recipe bit for bit, and
a run hands over to the official schedule by itself once its features have spread. The state (the current
temperature and the smoothed spread) is part of the checkpoint: a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from dinov3_us.distributed import all_reduce_, collective_device, get_world_size

SMOOTHING = 0.9  # exponential average of the spread (a batch of 16 is a noisy estimate)
MAX_DOWN = 0.9  # the temperature falls by at most 10% per step
BACKOFF = 1.25  # ... and rises by 25% per step while the guard holds
GUARD_BATCH_ENTROPY = 0.8  # the collapse watch warns below 0.7 (`CollapseWatch.min_teacher_batch_entropy`)
TARGET_ENTROPY_FLOOR = 0.6  # of ln K: the controller never sharpens the targets further


class TeacherTempController:
    """The teacher temperature of each iteration under `teacher.temp_control` (official: the schedule's value)."""

    def __init__(self, mode: str, spread: float, min_temp: float):
        self.mode, self.set_point, self.min_temp = mode, spread, min_temp
        self.temperature: float | None = None  # the next step's temperature (None: the schedule's)
        self.spread: float | None = None  # smoothed spread of the teacher's logits, before the temperature

    @classmethod
    def from_config(cls, cfg: Mapping) -> TeacherTempController:
        """`teacher.temp_control`, `teacher.temp_spread`, `teacher.min_temp`."""
        t = cfg["teacher"]
        return cls(t["temp_control"], t["temp_spread"], t["min_temp"])

    @property
    def auto(self) -> bool:
        """Whether the temperature adapts (else it is the schedule's, untouched)."""
        return self.mode == "auto"

    def at(self, official: float) -> float:
        """The temperature to use at an iteration whose scheduled value is `official`."""
        if not self.auto or self.temperature is None:
            return official
        return min(self.temperature, official)

    def update(self, metrics: Mapping[str, float], used: float, next_official: float) -> None:
        """Fold in one step's statistics (collective under auto: every rank must call it after every step)."""
        if not self.auto:
            return
        stats = torch.tensor([float(metrics["teacher_logit_std"]) * used, float(metrics["teacher_batch_entropy"]),
                              float(metrics["target_entropy"])], dtype=torch.float64, device=collective_device())
        spread, batch_entropy, target_entropy = (all_reduce_(stats) / get_world_size()).tolist()
        if not all(math.isfinite(v) for v in (spread, batch_entropy, target_entropy)):
            return  # a skipped (non-finite) step teaches nothing about the spread
        self.spread = spread if self.spread is None else SMOOTHING * self.spread + (1 - SMOOTHING) * spread
        if batch_entropy < GUARD_BATCH_ENTROPY or target_entropy < TARGET_ENTROPY_FLOOR:
            proposed = used * BACKOFF
        elif self.spread <= 0.0:  # identical logits (a fresh teacher, a constant batch): no temperature helps
            proposed = next_official
        else:
            proposed = max(self.spread / self.set_point, used * MAX_DOWN)
        self.temperature = min(max(proposed, self.min_temp), next_official)

    def state_dict(self) -> dict:
        """The controller's state (checkpointed)."""
        return {"temperature": self.temperature, "spread": self.spread}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore `state_dict()` (a checkpoint without it: the schedule's temperature until the first update)."""
        self.temperature, self.spread = state.get("temperature"), state.get("spread")
