"""Resume is exact at every checkpoint, not only at epoch boundaries: each resumed run repeats the
uninterrupted run's per-iteration losses and final teacher bit for bit (1 process; 0 and 2 loader workers;
bf16 under FSDP2 and fp32, where one process keeps plain modules).

The data epoch here is 5 iterations (44 train samples, batch 8) and the training "epoch" 10, so the
checkpoints fall at data-epoch boundaries and in the middle of data epochs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--config-file", str(REPO / "configs/train/tiny_cpu.yaml"), "train.OFFICIAL_EPOCH_LENGTH=10",
        "optim.epochs=3", "checkpointing.period=3", "checkpointing.max_to_keep=20", "train.log_period=1"]


def train(out: Path, data: Path, *extra: str) -> None:
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "--output-dir", str(out),
           f"train.dataset_path={data}:train", *ARGS, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def losses(out: Path) -> dict[int, float]:
    return {r["iteration"]: r["total_loss"] for r in map(json.loads, (out / "training_metrics.jsonl").open())}


def teacher(out: Path) -> dict:
    return torch.load(out / "eval" / "training_29" / "teacher_checkpoint.pth", weights_only=True)


def resume_from(ref: Path, iteration: int, out: Path) -> Path:
    """A copy of `ref` whose checkpoints after `iteration` are gone (as if it had stopped there)."""
    shutil.copytree(ref, out)
    shutil.rmtree(out / "eval")
    for ckpt in (out / "ckpt").iterdir():
        if ckpt.name.isdigit() and int(ckpt.name) > iteration:
            shutil.rmtree(ckpt)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers, points, dtype", [(0, (2, 8, 14, 23), "bf16"), (2, (11,), "bf16"), (0, (8,), "fp32")])
def test_resume_at_any_checkpoint_is_exact(tmp_path, phantom_shards, workers, points, dtype):
    options = (f"train.num_workers={workers}", f"compute_precision.param_dtype={dtype}")
    ref = tmp_path / "ref"
    train(ref, phantom_shards, *options)
    expected, final = losses(ref), teacher(ref)
    assert sorted(expected) == list(range(30))
    for it in points:
        out = resume_from(ref, it, tmp_path / f"from_{it}")
        train(out, phantom_shards, *options)
        assert losses(out) == expected, f"resumed after iteration {it}"
        assert all(torch.equal(teacher(out)[k], v) for k, v in final.items()), f"resumed after iteration {it}"
