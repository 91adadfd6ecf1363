"""2 processes (torchrun, gloo): SIGKILL after a checkpoint + restart reaches the uninterrupted run's weights and
per-iteration losses exactly; the same checkpoint resumes on 1 process (2 -> 1 resharding)."""

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from procs import kill_tree

from dinov3_us.checkpointer import TrainState

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--config-file", str(REPO / "configs/train/tiny_cpu.yaml"), "optim.epochs=3", "train.OFFICIAL_EPOCH_LENGTH=6",
        "checkpointing.period=4", "train.log_period=1", "train.batch_size_per_gpu=4"]


def torchrun(nproc: int, out: Path, data: Path, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(REPO / "tools" / "train.py"), "--output-dir", str(out), f"train.dataset_path={data}:train", *ARGS]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, **popen)


def finish(proc: subprocess.Popen) -> str:
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-4000:]
    return stdout


def losses(out: Path) -> dict[int, float]:
    lines = (out / "training_metrics.jsonl").read_text().splitlines()
    return {r["iteration"]: r["total_loss"] for r in map(json.loads, lines)}


def train_state(ckpt: Path) -> TrainState:
    """The loop state stored in a checkpoint (read alone, in this process)."""
    state = TrainState()
    sd = {"train": state.state_dict()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(sd, checkpoint_id=str(ckpt), no_dist=True)
    state.load_state_dict(sd["train"])
    return state


def teacher(out: Path) -> dict:
    return torch.load(out / "eval" / "training_17" / "teacher_checkpoint.pth", weights_only=True)


@pytest.mark.slow
def test_sigkill_and_resume_is_exact_and_reshards_to_one_process(tmp_path, phantom_shards):
    ref, killed, single = tmp_path / "ref", tmp_path / "killed", tmp_path / "single"
    finish(torchrun(2, ref, phantom_shards))

    proc = torchrun(2, killed, phantom_shards)
    marker = killed / "ckpt" / "7" / "COMPLETE.json"
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its checkpoint at iteration 7"
        time.sleep(0.05)
    assert kill_tree(proc.pid) == []  # torchrun and both ranks (in sessions of their own), mid-run
    proc.wait()
    subprocess.run(["cp", "-r", str(killed), str(single)], check=True)

    out = finish(torchrun(2, killed, phantom_shards))
    assert "Resuming from" in out
    for key, value in teacher(ref).items():
        assert torch.equal(teacher(killed)[key], value), key
    assert losses(killed) == losses(ref)  # every iteration, including those redone after the kill
    # every rank's skipped-sample counts are in the checkpoint, not only rank 0's
    data = train_state(killed / "ckpt" / "17").extra["data"]
    assert data["world_size"] == 2 and len(data["skipped_by_rank"]) == 2

    latest = max(int(p.name) for p in (single / "ckpt").iterdir() if p.name.isdigit())
    out = finish(torchrun(1, single, phantom_shards))
    assert f"at iteration {latest}" in out and "continuing at the start of epoch" in out
    assert set(teacher(single)) == set(teacher(ref)) and max(losses(single)) == 17
