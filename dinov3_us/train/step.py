"""One optimisation step of `SSLMetaArch`: schedules -> forward_backward -> clip -> step -> EMA."""

from __future__ import annotations

import math

import torch

from dinov3_us.distributed import all_reduce_max
from dinov3_us.train.param_groups import apply_optim_scheduler
from dinov3_us.train.schedules import Schedules


def train_step(model, optimizer: torch.optim.Optimizer, batch: dict, schedules: Schedules, iteration: int,
               clip_grad: float = 0.0, teacher_temp: float | None = None) -> dict[str, float]:
    """Run one step at `iteration`; returns float metrics (losses, schedule values, grad norm, collapse stats).

    `teacher_temp` replaces the schedule's value (`teacher.temp_control=auto`). A non-finite loss on any
    rank skips the optimizer and EMA updates on every rank (the caller counts and decides when to stop).
    """
    values = schedules.at(iteration)
    if teacher_temp is not None:
        values["teacher_temp_official"], values["teacher_temp"] = values["teacher_temp"], teacher_temp
    apply_optim_scheduler(optimizer, values["lr"], values["weight_decay"], values["last_layer_lr"])
    optimizer.zero_grad(set_to_none=True)
    loss, metrics = model.forward_backward(batch, teacher_temp=values["teacher_temp"], iteration=iteration)
    out = {k: float(v) for k, v in metrics.items()} | values | {"total_loss": float(loss)}
    if all_reduce_max(0.0 if math.isfinite(out["total_loss"]) else 1.0) > 0:
        out["skipped"] = 1.0
        return out
    params = [p for p in model.student.parameters() if p.grad is not None]
    if clip_grad > 0:
        out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip_grad))
    optimizer.step()
    model.update_ema(values["momentum"])
    model.update_gram(iteration)
    out["skipped"] = 0.0
    return out
