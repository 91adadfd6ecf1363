"""Process-group setup from torchrun, SLURM (srun), the launchers or a plain single process; device and backend.

How the ranks meet (the port, a dead sibling) is `dinov3_us.rendezvous`'s.

One code path everywhere: a single process still gets a process group (world size 1), so FSDP2 and
the losses' collectives run the same way on a laptop, in CI (gloo, CPU) and on a cluster (NCCL, CUDA).
The collectives at the end (`all_reduce_`, `all_gather_cat`, ...) are the project's only ones.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import _set_pg_timeout

from dinov3_us.errors import ConfigError
from dinov3_us.rendezvous import FOLDER as RDZV_FOLDER
from dinov3_us.rendezvous import FileRendezvous, RendezvousError, fixed_port, job_key, port_taken_message

logger = logging.getLogger("dinov3_us")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank, device and backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    rendezvous: str = "initialised before"  # how the ranks met (for the run's log)

    @property
    def is_main(self) -> bool:
        """True on global rank 0."""
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """`runtime.device`: auto (cuda if available) | cpu | cuda."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device=cuda, but CUDA is not available here; use runtime.device=cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"runtime.device: {name!r} is not one of auto, cpu, cuda")
    return torch.device(name)


def resolve_backend(name: str, device: torch.device) -> str:
    """`runtime.dist_backend`: auto (nccl on cuda, gloo on cpu) | nccl | gloo."""
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise ConfigError("runtime.dist_backend=nccl needs runtime.device=cuda")
    return name


def first_slurm_host(nodelist: str) -> str:
    """First host name of a SLURM node list (`n[1-3,5]` -> `n1`), via scontrol where available."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    m = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)
    if not m:
        raise ConfigError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    return m.group(1) + (m.group(2) or "")


def _env_from_slurm() -> None:
    """Fill RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR from SLURM_* when launched by srun without torchrun.

    MASTER_PORT is left alone: an explicit one wins, else the ranks rendezvous on a port of the kernel's
    choosing (`dinov3_us.rendezvous`).
    """
    env = os.environ
    env.setdefault("RANK", env["SLURM_PROCID"])
    env.setdefault("WORLD_SIZE", env["SLURM_NTASKS"])
    env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    env.setdefault("MASTER_ADDR", first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))


def init_distributed(device_name: str = "auto", backend_name: str = "auto", timeout_min: int = 30, *,
                     rendezvous_dir: str | os.PathLike | None = None, start_timeout_s: float = 300) -> DistInfo:
    """Initialise the default process group (idempotent) and return this process's `DistInfo`.

    How the ranks meet is `dinov3_us.rendezvous`'s (an explicit MASTER_PORT wins; one process needs no
    port; otherwise rank 0 publishes a kernel-chosen port in `rendezvous_dir/.rendezvous/`, the run
    folder every rank shares). `start_timeout_s` bounds the wait for a sibling that never arrives;
    `timeout_min` is the collectives' timeout once the group has formed.

    Raises:
        RendezvousError: a sibling failed or never came, or an explicit MASTER_PORT is taken (one line).
        ConfigError: the device or backend cannot be used here.
    """
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        _env_from_slurm()
    if "RANK" not in env:  # a plain single process
        env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        env.setdefault("MASTER_ADDR", "127.0.0.1")  # used only with an explicit MASTER_PORT
    rank, world_size, local_rank = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    backend = resolve_backend(backend_name, device)
    how = DistInfo.rendezvous
    if not dist.is_initialized():
        how = _form_group(backend, device, rank, world_size, rendezvous_dir, start_timeout_s)
        _set_pg_timeout(datetime.timedelta(minutes=timeout_min))  # the start-up bound is not the collectives'
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend, how)
    logger.info("process group: rank %d / %d, device %s, backend %s, rendezvous %s", info.rank, info.world_size,
                device, backend, how)
    return info


def _form_group(backend: str, device: torch.device, rank: int, world_size: int,
                rendezvous_dir: str | os.PathLike | None, start_timeout_s: float) -> str:
    """`init_process_group` through the first rendezvous of `dinov3_us.rendezvous` that applies; which, in words."""
    env = os.environ
    kwargs = {"backend": backend, "rank": rank, "world_size": world_size,
              "timeout": datetime.timedelta(seconds=start_timeout_s),
              "device_id": device if device.type == "cuda" else None}
    key = job_key()
    if "MASTER_PORT" not in env and world_size > 1 and (rendezvous_dir is None or key is None):
        if "MASTER_ADDR" not in env:
            raise ConfigError(f"RANK={rank} and WORLD_SIZE={world_size} are set but MASTER_ADDR and MASTER_PORT are "
                              "not: start the ranks with torchrun, srun or the launchers, or set both")
        env["MASTER_PORT"] = str(fixed_port(int(env.get("SLURM_JOB_ID", "0") or 0)))
    if "MASTER_PORT" in env:  # torchrun's, the user's, or the fixed one above
        try:
            dist.init_process_group(init_method="env://", **kwargs)
        except RuntimeError as err:  # DistNetworkError: the port is held by another process
            if (message := port_taken_message(env["MASTER_PORT"], err)) is None:
                raise
            raise RendezvousError(message) from None
        return f"{env['MASTER_ADDR']}:{env['MASTER_PORT']} (MASTER_PORT)"
    if world_size == 1:
        dist.init_process_group(store=dist.HashStore(), **kwargs)
        return "none (one process)"
    rdzv = FileRendezvous(Path(rendezvous_dir) / RDZV_FOLDER / key, rank, world_size,
                          env.get("MASTER_ADDR", "127.0.0.1"), start_timeout_s)
    store = rdzv.store()
    dist.init_process_group(store=store, **kwargs)
    rdzv.close()
    return f"{rdzv.address}:{store.port} (a port of the kernel's choosing, published by rank 0 in {rdzv.folder})"


def destroy_distributed() -> None:
    """Tear down every process group, after the objects that still hold one (FSDP modules, meshes) are freed.

    Collecting first matters: a group kept alive by a reference cycle would otherwise be destroyed during
    interpreter shutdown, where gloo's threads can abort the process ("terminate called without an
    active exception") after a run that succeeded.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def all_reduce_max(value: float) -> float:
    """Maximum of a float over all ranks (the value itself without a process group)."""
    if not is_enabled():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    return float(all_reduce_(t, "max").item())


def collective_device(device: torch.device | None = None) -> torch.device:
    """Where a collective's tensors must live: `device` (default: the current GPU) under NCCL, else the CPU."""
    if is_enabled() and dist.get_backend() == "nccl":
        return device if device is not None else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------ collectives (no-ops without a group)
# Used by the losses: every helper is the single-process answer when torch.distributed is unavailable
# or not initialised, so they run unchanged in a plain Python process, on CPU or GPU.

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


def all_gather_object(obj, group: ProcessGroup | None = None) -> list:
    """Every rank's picklable `obj`, in rank order (`[obj]` without a process group)."""
    if not is_enabled():
        return [obj]
    out: list = [None] * get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out
