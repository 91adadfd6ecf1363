"""Per-iteration schedules (lr, weight decay, teacher momentum, teacher temperature, last-layer lr).

Schedules are arrays precomputed for every iteration, as in DINOv3, so resuming needs only the
iteration number. Both official config styles are supported: v1 (`optim.*`, `teacher.*`, cosine
with linear warmup) and v2 (`schedules.*` with start / peak / end, when `schedules.enabled`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dinov3_us.errors import ConfigError

logger = logging.getLogger("dinov3_us")


def cosine_schedule(
    base_value: float,
    final_value: float,
    total_iters: int,
    warmup_iters: int = 0,
    start_warmup_value: float = 0.0,
    freeze_iters: int = 0,
    trunc_extra: float = 0.0,
) -> np.ndarray:
    """v1: `freeze_iters` zeros, linear warmup to `base_value`, then cosine to `final_value` ([total_iters])."""
    cosine_iters = total_iters - warmup_iters - freeze_iters
    if cosine_iters < 0:
        raise ConfigError(
            f"schedule: warmup ({warmup_iters}) + freeze ({freeze_iters}) iterations exceed the total ({total_iters})"
        )
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    if trunc_extra == 0.0:
        steps = np.arange(cosine_iters)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * steps / max(cosine_iters, 1)))
    else:  # compute a longer cosine and keep its head, rescaled to end exactly at final_value
        angles = np.linspace(0, np.pi, int((1 + trunc_extra) * cosine_iters))[:cosine_iters]
        cosine = (np.cos(angles) + 1) / 2
        cosine = (cosine - cosine[-1]) / (1 - cosine[-1])
        cosine = cosine * (base_value - final_value) + final_value
    return np.concatenate((np.zeros(freeze_iters), warmup, cosine)).astype(np.float64)


def linear_warmup_cosine_decay(
    start: float, peak: float, end: float, warmup_iterations: int, total_iterations: int,
    cosine_iterations: int | None = None,
) -> np.ndarray:
    """v2: linear `start` -> `peak`, cosine `peak` -> `end`, then constant `end` ([total_iterations])."""
    if cosine_iterations is None:
        cosine_iterations = total_iterations - warmup_iterations
    remaining = total_iterations - warmup_iterations - cosine_iterations
    if remaining < 0:
        raise ConfigError(f"schedule: warmup ({warmup_iterations}) + cosine ({cosine_iterations}) iterations "
                          f"exceed the total ({total_iterations})")
    if warmup_iterations > total_iterations:
        raise ConfigError(f"schedule: warmup ({warmup_iterations}) iterations exceed the total ({total_iterations})")
    linear = np.linspace(start, peak, warmup_iterations, endpoint=False)
    cosine = (np.cos(np.linspace(0, np.pi, cosine_iterations)) + 1) / 2 * (peak - end) + end
    return np.concatenate([linear, cosine, np.full(remaining, end)]).astype(np.float64)


def lr_scale(scaling_rule: str, global_batch_size: int) -> float:
    """Factor applied to the configured lr: 4 sqrt(B / 1024), B / 256, or 1 (`none`)."""
    if scaling_rule == "sqrt_wrt_1024":
        return 4 * math.sqrt(global_batch_size / 1024.0)
    if scaling_rule == "linear_wrt_256":
        return global_batch_size / 256.0
    if scaling_rule == "none":
        return 1.0
    raise ConfigError(f"optim.scaling_rule: {scaling_rule!r} is not one of sqrt_wrt_1024, linear_wrt_256, none")


@dataclass
class Schedules:
    """Per-iteration values; indexing past the end returns the last value."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    last_layer_lr: np.ndarray

    def at(self, iteration: int) -> dict[str, float]:
        """All schedule values at `iteration`."""
        out = {}
        for name in ("lr", "weight_decay", "momentum", "teacher_temp", "last_layer_lr"):
            values = getattr(self, name)
            out[name] = float(values[min(iteration, len(values) - 1)])
        return out


def _v2(cfg: Mapping, name: str, iter_per_epoch: int, total: int, scale: float = 1.0) -> np.ndarray:
    section = cfg["schedules"][name]
    cosine = section["cosine_epochs"]
    try:
        return linear_warmup_cosine_decay(
            start=section["start"],
            peak=section["peak"] * scale,
            end=section["end"] * scale,
            warmup_iterations=iter_per_epoch * section["warmup_epochs"],
            total_iterations=total,
            cosine_iterations=iter_per_epoch * cosine if cosine is not None else None,
        )
    except ConfigError as err:
        raise ConfigError(f"schedules.{name}: {err} (optim.epochs={cfg['optim']['epochs']})") from None


def build_schedulers(cfg: Mapping, world_size: int = 1) -> Schedules:
    """Build every schedule of a run from its config and the number of processes (global batch scaling)."""
    epoch = cfg["train"]["OFFICIAL_EPOCH_LENGTH"]
    optim, teacher = cfg["optim"], cfg["teacher"]
    total = optim["epochs"] * epoch
    if total <= 0:
        raise ConfigError(f"optim.epochs x train.OFFICIAL_EPOCH_LENGTH must be positive, got {total}")
    scale = lr_scale(optim["scaling_rule"], cfg["train"]["batch_size_per_gpu"] * world_size)
    if cfg["schedules"]["enabled"]:
        lr = _v2(cfg, "lr", epoch, total, scale)
        freeze = epoch * cfg["schedules"]["lr"]["freeze_last_layer_epochs"]
        wd, momentum = _v2(cfg, "weight_decay", epoch, total), _v2(cfg, "momentum", epoch, total)
        temp = _v2(cfg, "teacher_temp", epoch, total)
    else:
        trunc = optim["schedule_trunc_extra"]
        lr = cosine_schedule(optim["lr"] * scale, optim["min_lr"], total, optim["warmup_epochs"] * epoch,
                             trunc_extra=trunc)
        freeze = epoch * optim["freeze_last_layer_epochs"]
        wd = cosine_schedule(optim["weight_decay"], optim["weight_decay_end"], total, trunc_extra=trunc)
        momentum = cosine_schedule(teacher["momentum_teacher"], teacher["final_momentum_teacher"], total,
                                   trunc_extra=trunc)
        warm = min(teacher["warmup_teacher_temp_epochs"] * epoch, total)  # linear warmup, then constant
        if warm < teacher["warmup_teacher_temp_epochs"] * epoch:
            logger.warning("teacher.warmup_teacher_temp_epochs (%d) is longer than the run (%d epochs): the teacher "
                           "temperature warms up over the whole run and reaches %g at its last iteration",
                           teacher["warmup_teacher_temp_epochs"], optim["epochs"], teacher["teacher_temp"])
        temp = cosine_schedule(teacher["teacher_temp"], teacher["teacher_temp"], total, warm,
                               start_warmup_value=teacher["warmup_teacher_temp"])
    last_layer_lr = lr.copy()
    last_layer_lr[:freeze] = 0.0
    logger.info("schedules: %d iterations, peak lr %.3g (x%.3g batch scaling), %s style", total, lr.max(), scale,
                "v2" if cfg["schedules"]["enabled"] else "v1")
    return Schedules(lr, wd, momentum, temp, last_layer_lr)
