"""The rendezvous (dinov3_us.rendezvous): ranks meet on a port nothing else can hold, an explicit MASTER_PORT
wins, and no rank waits long for a sibling that failed or never came. Real processes, real TCP, real files."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ports import HeldPorts

from dinov3_us.rendezvous import ephemeral_range, fixed_port, job_key

REPO = Path(__file__).resolve().parents[1]
# One rank: start the process group as tools/train.py does, all-reduce, print what happened (or the one error line).
RANK = """
import json, sys
import torch, torch.distributed as dist
from dinov3_us.distributed import destroy_distributed, init_distributed
from dinov3_us.errors import DinoUSError
try:
    info = init_distributed("cpu", "gloo", rendezvous_dir=sys.argv[1], start_timeout_s=float(sys.argv[2]))
except DinoUSError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
x = torch.tensor([info.rank + 1.0])
dist.all_reduce(x)
store = dist.distributed_c10d._get_default_store()
while hasattr(store, "underlying_store"):  # PrefixStores around the TCP store
    store = store.underlying_store
print(json.dumps({"rank": info.rank, "sum": x.item(), "port": getattr(store, "port", None)}))
destroy_distributed()
"""


def start_rank(rank: int, job_id: int, folder: Path, step: int = 0, timeout_s: float = 300, **env) -> subprocess.Popen:
    """Rank `rank` of 2 as srun starts it (SLURM_* variables, no MASTER_PORT unless given)."""
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT") and not k.startswith("SLURM_")}
    base |= {"SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank), "SLURM_JOB_ID": str(job_id),
             "SLURM_STEP_ID": str(step), "SLURM_JOB_NODELIST": "localhost", "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, "-c", RANK, str(folder), str(timeout_s)], env=base, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, dict | None, str]:
    """(exit code, the rank's JSON line or None, stderr)."""
    out, err = proc.communicate(timeout=600)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return proc.returncode, json.loads(lines[-1]) if lines else None, err


def test_a_fixed_port_is_outside_the_ephemeral_range():
    low, high = ephemeral_range()
    ports = {fixed_port(job) for job in range(0, 200_000, 997)}
    assert all(10000 <= p <= 65535 and not low <= p <= high for p in ports)
    assert len(ports) > 100  # spread over the span, not one port for every job


def test_the_job_key_names_one_start_of_one_job():
    slurm = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "3", "SLURM_RESTART_COUNT": "1"}
    assert job_key(slurm) == "slurm-42.3-1"
    assert job_key({**slurm, "SLURM_RESTART_COUNT": "2"}) != job_key(slurm)  # a requeued job never reads the old file
    local = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "9876", "DINOV3_US_LOCAL_ATTEMPT": "1"}
    assert job_key({**slurm, **local}) == "local-9876-1"  # a local launch inside a SLURM allocation is its own job
    assert job_key({}) is None


@pytest.mark.slow
def test_ten_two_rank_starts_succeed_while_the_old_rules_ports_and_many_ephemeral_ports_are_held(tmp_path):
    job_id = 31337
    old_rules = [20000 + job_id % 20000, random.Random(str(job_id)).randint(20000, 60000)]  # srun's, submitit's
    with HeldPorts() as held:
        assert all(held.listen(p) for p in old_rules)
        held.outgoing(1000)  # what a busy node's outgoing connections do to the ephemeral range
        for step in range(10):
            procs = [start_rank(rank, job_id, tmp_path / "run", step=step) for rank in (0, 1)]
            results = [finish(p) for p in procs]
            for code, line, err in results:
                assert code == 0 and line is not None, err[-2000:]
            assert [line["sum"] for _, line, _ in results] == [3.0, 3.0]
            port = results[0][1]["port"]
            assert isinstance(port, int) and port not in held.listening
    assert not (tmp_path / "run" / ".rendezvous").exists()  # rank 0 removes the folder once the group has formed


@pytest.mark.slow
def test_an_explicit_master_port_wins_and_a_taken_one_is_one_line(tmp_path, phantom_shards):
    with HeldPorts() as held:
        free = next(p for p in range(fixed_port(4242), 65536) if held.listen(p))
        held.close()  # now free, and chosen by the user
        procs = [start_rank(rank, 4242, tmp_path / "run", MASTER_PORT=str(free)) for rank in (0, 1)]
        results = [finish(p) for p in procs]
        assert [(code, line and line["port"]) for code, line, _ in results] == [(0, free), (0, free)], results
        assert held.listen(free)  # now taken: pretraining with it says so in one line, before any work
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"MASTER_PORT": str(free)}
        proc = subprocess.run([sys.executable, str(REPO / "tools/train.py"), "--config-file",
                               str(REPO / "configs/train/tiny_cpu.yaml"), "--output-dir", str(tmp_path / "train"),
                               f"train.dataset_path={phantom_shards}:train"], capture_output=True, text=True,
                              env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and f"MASTER_PORT={free} is already in use" in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "train" / "ckpt").exists()


@pytest.mark.slow
def test_a_rank_that_gives_up_stops_a_late_sibling_at_once_naming_it(tmp_path):
    """Rank 1 alone gives up after 3 s naming rank 0; rank 0, started after, stops on rank 1's word, not its own
    300 s limit."""
    code, _, err = finish(start_rank(1, 555, tmp_path / "run", timeout_s=3))
    assert code == 2 and "rank 0 did not open the rendezvous within 3 s (runtime.start_timeout_s" in err, err[-2000:]
    start = time.monotonic()
    code, _, err = finish(start_rank(0, 555, tmp_path / "run", timeout_s=300))
    assert code == 2 and "rank 1 failed before the process group formed" in err, err[-2000:]
    assert "rank 0 did not open the rendezvous" in err  # ... and why
    assert time.monotonic() - start < 120  # a bound on waiting for a dead sibling, far below the 300 s limit
