"""Collectives used by the losses, active only inside an initialised process group.

Every helper is a no-op (or the single-process answer) when `torch.distributed` is unavailable or
not initialised, so the losses run unchanged in a plain Python process, on CPU or GPU.
"""

import torch
import torch.distributed as dist

ProcessGroup = dist.ProcessGroup if dist.is_available() else object


def is_enabled() -> bool:
    """True when collectives must be used: `torch.distributed` is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size(group: ProcessGroup | None = None) -> int:
    """Number of processes in `group` (the default group when None); 1 outside distributed runs."""
    return dist.get_world_size(group=group) if is_enabled() else 1


def get_rank(group: ProcessGroup | None = None) -> int:
    """Rank of this process within `group`; 0 outside distributed runs."""
    return dist.get_rank(group=group) if is_enabled() else 0


def all_reduce_(tensor: torch.Tensor, op: str = "sum", group: ProcessGroup | None = None) -> torch.Tensor:
    """Reduce `tensor` in place over `group` (`op` is "sum" or "max") when distributed; return it."""
    if op not in ("sum", "max"):
        raise ValueError(f"op must be 'sum' or 'max', got {op!r}")
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=group)
    return tensor


class _AllGatherCat(torch.autograd.Function):
    """Concatenate equal-sized tensors from all ranks along dim 0, with gradients to every rank.

    Backward sums the incoming gradients over ranks (every rank's loss may depend on every rank's
    features) and returns this rank's slice. Uses only `all_gather` and `all_reduce`, which every
    backend (gloo, NCCL) supports.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group=group)
        ctx.local_n = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group=group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)  # [world_size * local_n, ...]

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad = grad_output.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.local_n
        return grad[start : start + ctx.local_n], None


def all_gather_cat(x: torch.Tensor, group: ProcessGroup | None = None) -> torch.Tensor:
    """Differentiable all-gather of `x` [n, ...] into [world_size * n, ...]; `x` itself when not distributed.

    Every rank must pass the same shape.
    """
    if not is_enabled():
        return x
    return _AllGatherCat.apply(x, group)
