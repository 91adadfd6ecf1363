"""What both launchers share: command-line options, cluster detection, partition GPUs and submitit executors.

`--cluster auto` (the default) submits to SLURM when `srun` is on PATH and runs the same chain locally
(`dinov3_us.launch.local_controller`, one process per task) when it is not; `slurm`, `local` and `debug` (in
this process, for a debugger) force one. A `--dry-run` prints every job's SLURM options as `#SBATCH`
lines and the command submitit's job runs (submitit adds its own log and open-mode lines).
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinov3_us.errors import DinoUSError
from dinov3_us.launch.argtypes import nonnegative_float, nonnegative_int, positive_int

logger = logging.getLogger("dinov3_us")

CLUSTERS = ("auto", "slurm", "local", "debug")
SIGNAL_DELAY_S = 90  # USR2 this long before the time limit: the pretraining checkpoints and requeues


class LaunchError(DinoUSError):
    """A problem found before anything was submitted (nothing was submitted)."""


def add_cluster_args(parser: argparse.ArgumentParser, timeout_min: int, pretraining: bool = True) -> None:
    """The options that choose where and with which resources the jobs run.

    `pretraining`: the launch has a pretraining job (submit_pretrain.py); False for submit_eval.py, where
    --timeout is every job's limit and --nodes, --eval-timeout and --max-num-timeout play no part (the
    options stay, for one command line; only their help says so).
    """
    if pretraining:
        nodes_help = "nodes for pretraining (default 1)"
        timeout_help = (f"time limit of the main job in minutes (default {timeout_min}); it is signalled (USR2) "
                        "90 s before, checkpoints and requeues itself")
        eval_timeout_help = "time limit of the conversion and evaluation jobs in minutes (default 240)"
        requeue_help = ("requeues after reaching the time limit before giving up (default 3; preemptions are not "
                        "counted)")
    else:
        nodes_help = "not used: each evaluation job runs on one node"
        timeout_help = f"time limit of each job (conversion and evaluations) in minutes (default {timeout_min})"
        eval_timeout_help = "not used by evaluation-only launches: --timeout sets every job's limit"
        requeue_help = ("not used by evaluation-only launches: evaluation jobs do not checkpoint, so one that "
                        "reaches its time limit ends")
    g = parser.add_argument_group("where the jobs run")
    g.add_argument("--cluster", choices=CLUSTERS, default="auto",
                   help="auto: SLURM when `srun` is on PATH, else local; debug: in this process (default auto)")
    g.add_argument("--nodes", type=positive_int, default=1, help=nodes_help)
    g.add_argument("--gpus-per-node", type=positive_int, default=None, metavar="G",
                   help="tasks per node, one per GPU (default: all GPUs of the partition's nodes); with "
                        "runtime.device=cpu, processes per node (default 1)")
    g.add_argument("--partition", help="SLURM partition (default: the cluster's default partition)")
    g.add_argument("--account", help="SLURM account")
    g.add_argument("--qos", help="SLURM quality of service")
    g.add_argument("--timeout", type=positive_int, default=timeout_min, metavar="MIN", help=timeout_help)
    g.add_argument("--eval-timeout", type=positive_int, default=240, metavar="MIN", help=eval_timeout_help)
    g.add_argument("--max-num-timeout", type=nonnegative_int, default=3, metavar="N", help=requeue_help)
    g.add_argument("--cpus-per-task", type=positive_int, help="CPUs per task (default: SLURM's)")
    g.add_argument("--mem", help="memory per node in SLURM syntax, e.g. 200G (default: SLURM's)")
    g.add_argument("--exclude", help="nodes to avoid, e.g. node[1-3]")
    g.add_argument("--constraint", help="SLURM node features, e.g. a100")
    g.add_argument("--comment", help="SLURM job comment")
    g.add_argument("--dry-run", action="store_true",
                   help="check everything, print the sbatch scripts (or local commands) and submit nothing")
    g.add_argument("--wait", action="store_true",
                   help="SLURM: stay and follow the jobs until they end (local runs always do)")
    g.add_argument("--poll", type=nonnegative_float, default=10.0, metavar="S",
                   help="seconds between state checks (default 10)")


def run_command(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    """`cmd`'s completed process (output captured as text), or None when it did not run or timed out."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_controller_error() -> str | None:
    """None when SLURM's controller answers `sinfo`, else why not."""
    proc = run_command(["sinfo", "-h", "-o", "%P"], timeout=20)
    if proc is None:
        return "`sinfo` did not run or timed out"
    if proc.returncode != 0:
        return (proc.stderr or proc.stdout).strip().splitlines()[-1] if (proc.stderr or proc.stdout).strip() \
            else f"`sinfo` exited with {proc.returncode}"
    return None


def resolve_cluster(requested: str) -> tuple[str, str | None]:
    """(cluster, note): `auto` becomes slurm when `srun` is on PATH, else local (with a note saying so)."""
    if requested in ("local", "debug"):
        return requested, None
    if shutil.which("srun") is None:
        if requested == "slurm":
            raise LaunchError("--cluster slurm: no `srun` on PATH (not a SLURM login node?); use --cluster local")
        return "local", "no `srun` on PATH: this is not a SLURM login node, so the chain runs here (--cluster local)"
    error = slurm_controller_error()
    if error is not None:
        raise LaunchError(f"`srun` is on PATH but the SLURM controller does not answer ({error}); "
                          "start it or check SLURM_CONF, or run here with --cluster local")
    return "slurm", None


def parse_gres_gpus(gres: str) -> int:
    """GPUs per node in a `sinfo %G` field: `gpu:a100:8(S:0-1)` -> 8, `gpu:4,gpu:v100:2` -> 6, `(null)` -> 0."""
    gres = re.sub(r"\([^)]*\)", "", gres)  # socket bindings may hold commas
    total = 0
    for item in gres.split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def partition_gpus(partition: str | None) -> tuple[str, int]:
    """(partition name, most GPUs any of its nodes has), from `sinfo`; `None` means the default partition."""
    proc = run_command(["sinfo", "-h", "-o", "%P|%G"], timeout=20)
    if proc is None or proc.returncode != 0:
        raise LaunchError(f"cannot list SLURM partitions with sinfo: {proc.stderr.strip() if proc else 'no sinfo'}")
    table: dict[str, int] = {}
    default = None
    for line in proc.stdout.splitlines():
        if "|" not in line:
            continue
        name, gres = line.split("|", 1)
        if name.endswith("*"):
            name = name[:-1]
            default = name
        table[name] = max(table.get(name, 0), parse_gres_gpus(gres))
    name = partition or default
    if name is None:
        raise LaunchError("the cluster has no default partition: give --partition "
                          f"(available: {', '.join(sorted(table)) or 'none'})")
    if name not in table:
        raise LaunchError(f"--partition {name}: no such SLURM partition (available: {', '.join(sorted(table))})")
    return name, table[name]


@dataclass
class Resources:
    """What one job asks for."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    timeout_min: int = 60


@dataclass
class ClusterOptions:
    """The SLURM options common to every job of a launch (from the command line)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    exclude: str | None = None
    constraint: str | None = None
    comment: str | None = None
    max_num_timeout: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClusterOptions:
        """Pick the fields out of parsed arguments."""
        return cls(args.partition, args.account, args.qos, args.cpus_per_task, args.mem, args.exclude,
                   args.constraint, args.comment, args.max_num_timeout)


def slurm_parameters(name: str, res: Resources, opts: ClusterOptions, dependency: str | None = None) -> dict:
    """submitit SlurmExecutor parameters (SLURM's own names) of one job."""
    params: dict[str, Any] = {"job_name": name, "nodes": res.nodes, "ntasks_per_node": res.tasks_per_node,
                              "time": res.timeout_min, "signal_delay_s": SIGNAL_DELAY_S,
                              "srun_args": ["--kill-on-bad-exit=1"]}  # a failed task ends the step at once
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "cpus_per_task", "exclude", "constraint", "comment"):
        value = getattr(opts, key)
        if value is not None:
            params[key] = value
    additional = dict(opts.extra)
    if opts.mem:
        additional["mem"] = opts.mem  # SLURM syntax as given (submitit's own `mem` expects GB)
    if dependency:
        params["dependency"] = dependency
        additional["kill-on-invalid-dep"] = "yes"  # a failed parent cancels its dependents on any cluster
    if additional:
        params["additional_parameters"] = additional
    return params


def submitit_command(folder: Path) -> str:
    """The command every submitit SLURM job runs (as SlurmExecutor builds it)."""
    return " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_script(folder: Path, params: dict) -> str:
    """The SLURM options of `slurm_parameters()` as an sbatch script header, and the job's command (--dry-run)."""
    options = {k: v for k, v in params.items() if k not in ("srun_args", "additional_parameters", "signal_delay_s")}
    options |= params.get("additional_parameters", {})
    lines = ["#!/bin/bash", *(f"#SBATCH --{k.replace('_', '-')}={shlex.quote(str(v))}" for k, v in options.items()),
             f"#SBATCH --signal=USR2@{params['signal_delay_s']}",  # checkpoint + requeue before the time limit
             "", " ".join(["srun", *params["srun_args"], submitit_command(folder)])]
    return "\n".join(lines) + "\n"


def make_executor(cluster: str, folder: Path, name: str, res: Resources, opts: ClusterOptions,
                  dependency: str | None = None):
    """A submitit executor for one job of the chain."""
    import submitit

    if cluster == "slurm":
        executor = submitit.SlurmExecutor(folder, max_num_timeout=opts.max_num_timeout)
        executor.update_parameters(**slurm_parameters(name, res, opts, dependency))
    elif cluster == "local":
        from dinov3_us.launch.local_controller import LocalExecutor

        executor = LocalExecutor(folder)  # a failed task ends its siblings; nothing outlives the launcher
        executor.update_parameters(timeout_min=res.timeout_min, tasks_per_node=res.tasks_per_node,
                                   gpus_per_node=res.gpus_per_node)
    elif cluster == "debug":
        executor = submitit.DebugExecutor(folder)
    else:
        raise LaunchError(f"unknown cluster {cluster!r}; expected one of {', '.join(CLUSTERS[1:])}")
    return executor
