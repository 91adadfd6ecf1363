"""Launcher test fixtures: the SLURM cluster (skipped, saying why, when none is up) and a PATH without SLURM."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LOCAL_SLURM_CONF = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm_local")) / "etc" / "slurm.conf"


def _cluster_problem() -> str | None:
    if os.environ.get("SLURM_LOCAL") == "0":
        return "SLURM_LOCAL=0 (make test sets it where it could not start a cluster of its own)"
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (no sinfo on PATH)"
    if not LOCAL_SLURM_CONF.is_file():
        return f"no {LOCAL_SLURM_CONF}"
    if os.environ.get("SLURM_CONF", str(LOCAL_SLURM_CONF)) != str(LOCAL_SLURM_CONF):
        return f"SLURM_CONF={os.environ['SLURM_CONF']} is another cluster; these tests only use the local test cluster"
    env = {**os.environ, "SLURM_CONF": str(LOCAL_SLURM_CONF)}
    try:
        proc = subprocess.run(["sinfo", "-h", "-p", "debug", "-t", "idle,mix,alloc", "-o", "%D"],
                              capture_output=True, text=True, timeout=20, env=env)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    nodes = sum(int(x) for x in proc.stdout.split() if x.isdigit())
    if nodes < 2:
        return f"partition debug has {nodes} usable node(s), the tests need 2"
    os.environ["SLURM_CONF"] = str(LOCAL_SLURM_CONF)  # the launchers (subprocesses) and sacct need it
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A running two-node SLURM cluster (../shared/tools/slurm_local.sh up), else the test is skipped."""
    problem = _cluster_problem()
    if problem:
        pytest.skip(f"no SLURM cluster for these tests ({problem}): `make test` starts one of its own with "
                    "../shared/tools/slurm_local.sh; by hand: bash ../shared/tools/slurm_local.sh up && export "
                    "SLURM_CONF=/tmp/slurm_local/etc/slurm.conf")
    return os.environ["SLURM_CONF"]


@pytest.fixture(scope="session")
def no_srun_env(tmp_path_factory) -> dict:
    """An environment whose PATH has python but no SLURM commands (a machine without SLURM)."""
    bin_dir = tmp_path_factory.mktemp("no_srun_bin")
    (bin_dir / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env["PATH"] = str(bin_dir)
    return env
