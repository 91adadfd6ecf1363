"""Helpers of the launcher tests: run a launcher as a user would, the tiny recipe's arguments, sacct states."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tiny_args(shards: Path, out: Path, *extra: str) -> list[str]:
    """The tiny CPU recipe for 20 iterations on 2 nodes x 1 process (1 thread each), checkpoint every 10."""
    return ["--nodes", "2", "--cpus-per-task", "1", "--config-file", str(REPO / "configs/train/tiny_cpu.yaml"),
            "--output-dir", str(out), f"train.dataset_path={shards}:train", "optim.epochs=2",
            "train.OFFICIAL_EPOCH_LENGTH=10", "checkpointing.period=10", "--timeout", "20", "--eval-timeout", "20",
            "--poll", "1", *extra]


def run_launcher(script: str, args: list[str], env: dict | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """`python launchers/<script> args...` from the repository root."""
    return subprocess.run([sys.executable, str(REPO / "launchers" / script), *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


def read_jobs(out: Path) -> dict:
    """OUT/jobs.json."""
    return json.loads((out / "jobs.json").read_text())


def sacct_states(job_ids: list[str], duplicates: bool = False) -> list[tuple[str, str]]:
    """(job id, state) rows from SLURM's accounting (with -D: every run of a requeued job)."""
    cmd = ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", "JobID,State"] + (["-D"] if duplicates else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [(line.split("|")[0], line.split("|")[1].split()[0]) for line in out.splitlines() if line.strip()]
