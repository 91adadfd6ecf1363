"""The pretraining and fine-tuning optimizer: AdamW with the fastest implementation the device runs.

torch's default AdamW on CPU is the per-parameter for-loop (`foreach` is only chosen by default on
CUDA). The fused kernel does the same update in one pass over each parameter (several times faster
than the for-loop on CPU: see bench/bench_step_parts.py -> bench/results/step_parts.json, `adamw_step`)
and runs on CPU and CUDA, for plain and FSDP2 (DTensor) parameters alike. The update is the same
formula; the fused kernel's float rounding differs from the for-loop's in the last bits, which is why
every optimizer of this project goes through here (a resumed run and an uninterrupted one use the same
kernel).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from dinov3_us.fsdp import local_shard

FUSED_DEVICES = ("cpu", "cuda")


def adamw_implementation(params: Iterable[Tensor]) -> str:
    """'fused' when every parameter is a floating tensor on a device with the fused kernel, else 'foreach'."""
    locals_ = [local_shard(p) for p in params]
    if locals_ and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in locals_):
        return "fused"
    return "foreach"


def build_adamw(params_groups: Sequence[dict], betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over `params_groups` (lr, weight decay and multipliers are set per group by the schedules)."""
    params = [p for group in params_groups for p in group["params"]]
    impl = adamw_implementation(params)
    return torch.optim.AdamW(params_groups, lr=0.0, betas=betas, fused=impl == "fused", foreach=impl == "foreach")
