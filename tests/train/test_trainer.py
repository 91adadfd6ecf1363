"""tools/train.py end to end in one process: outputs, export, resume, preemption, non-finite guard, bad config."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dinov3_us.checkpointer import invalid_reason
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.weights import load_backbone_weights
from dinov3_us.weights.checkpoint import convert_checkpoint

REPO = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, str(REPO / "tools" / "train.py"), "--config-file", str(REPO / "configs/train/tiny_cpu.yaml")]
SHORT = ["optim.epochs=2", "train.OFFICIAL_EPOCH_LENGTH=6", "checkpointing.period=4", "train.log_period=2"]
pytestmark = pytest.mark.slow  # every test trains in a subprocess


def train(out: Path, data: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    cmd = TRAIN + ["--output-dir", str(out), f"train.dataset_path={data}:train", *SHORT, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


def test_run_writes_every_output_and_resumes(tmp_path, phantom_shards):
    out = tmp_path / "run"
    proc = train(out, phantom_shards)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "tb" not in p.parts}
    ckpt_files = {f"ckpt/{it}/{f}" for it in (7, 11) for f in (".metadata", "__0_0.distcp", "COMPLETE.json",
                                                                   "rank0.pt")}
    report = {"report.md", "report.html", *(f"report/{f}.png" for f in ("selfdistill", "losses", "schedules",
                                                                        "throughput"))}  # no monitor: too few
    assert names == {"config.yaml", ".train.lock", "log.txt", "training_metrics.jsonl", "teacher.pth", "teacher.json",
                     "eval/training_11/teacher_checkpoint.pth",
                     "eval/training_11/teacher_checkpoint.json"} | ckpt_files | report | {
                     f"ckpt/3/{f}" for f in (".metadata", "__0_0.distcp", "COMPLETE.json", "rank0.pt")}
    assert list((out / "tb").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (out / "training_metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 3, 5, 7, 9, 11]
    for key in ("total_loss", "ibot_loss", "koleo_loss", "lr", "weight_decay", "momentum", "teacher_temp",
                "grad_norm", "images_per_second", "tflops", "mfu", "teacher_batch_entropy"):
        assert key in records[-1], key
    assert "it 12/12" in proc.stdout and "img/s" in proc.stdout and "ETA" in proc.stdout

    meta = json.loads((out / "eval/training_11/teacher_checkpoint.json").read_text())
    backbone = DinoVisionTransformer(**meta["arch"])
    load_backbone_weights(backbone, out / "eval/training_11/teacher_checkpoint.pth")  # strict
    assert backbone.in_chans == 1 and meta["iteration"] == 11

    # the completed run's teacher.pth (written from the trainer's memory) is, byte for byte, what
    # tools/convert_checkpoint.py reads back from its final checkpoint
    assert "wrote the teacher of checkpoint" in (out / "log.txt").read_text()
    converted = convert_checkpoint(out / "ckpt" / "11", tmp_path / "converted.pth")
    assert (out / "teacher.pth").read_bytes() == converted.read_bytes()
    written, expected = (torch.load(p, weights_only=True) for p in (out / "teacher.pth", converted))
    assert list(written) == list(expected) and all(torch.equal(written[k], expected[k]) for k in expected)
    # the last iteration's export and teacher.pth: one file, two names (a hard link), each with its sidecar
    assert os.path.samefile(out / "teacher.pth", out / "eval/training_11/teacher_checkpoint.pth")
    sidecar = json.loads((out / "teacher.json").read_text())
    assert sidecar == json.loads((tmp_path / "converted.json").read_text())
    assert sidecar["iteration"] == 11 and sidecar["source"] == str(out / "ckpt" / "11")
    assert sidecar["selected"] == "the final checkpoint (no best checkpoint on the downstream monitor)"
    mtime = (out / "teacher.pth").stat().st_mtime_ns

    again = train(out, phantom_shards)  # nothing left to do: resume and stop
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"Resuming from {out / 'ckpt' / '11'} at iteration 11" in again.stdout
    assert "it 12/12" not in again.stdout
    assert f"{out / 'teacher.pth'} already holds checkpoint {out / 'ckpt' / '11'}" in again.stdout
    assert (out / "teacher.pth").stat().st_mtime_ns == mtime  # not rewritten


def test_preemption_signal_checkpoints_and_exits_for_requeue(tmp_path, phantom_shards):
    out = tmp_path / "run"
    cmd = TRAIN + ["--output-dir", str(out), f"train.dataset_path={phantom_shards}:train", "optim.epochs=100",
                   "train.OFFICIAL_EPOCH_LENGTH=10", "checkpointing.period=1000", "train.log_period=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "training_metrics.jsonl").exists() or len((out / "training_metrics.jsonl").read_text()) < 10:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, stdout[-3000:]
    saved = sorted(int(p.name) for p in (out / "ckpt").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and saved[0] < 1000  # the interrupted iteration, not a periodic one
    assert "received SIGUSR1" in stdout
    # no monitor: teacher.pth is the last iteration's teacher, which a preempted run has not reached
    assert not (out / "teacher.pth").exists() and not (out / "teacher.json").exists()


def test_non_finite_losses_stop_with_a_clear_error(tmp_path, phantom_shards):
    proc = train(tmp_path / "run", phantom_shards, "optim.lr=1e30", "optim.clip_grad=0.0", "optim.warmup_epochs=0",
                 "train.max_consecutive_nonfinite=1")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "consecutive non-finite losses" in proc.stderr
    assert "non-finite loss" in proc.stdout  # the skipped steps were logged


def test_bad_config_and_missing_data_are_user_errors(tmp_path, phantom_shards):
    typo = train(tmp_path / "a", phantom_shards, "optim.learning_rate=1")
    assert typo.returncode == 2 and "did you mean" in typo.stderr and "Traceback" not in typo.stderr
    missing = subprocess.run(TRAIN + ["--output-dir", str(tmp_path / "b"), f"train.dataset_path={tmp_path}/none"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "none" in missing.stderr


def test_corrupted_latest_checkpoint_falls_back(tmp_path, phantom_shards):
    out = tmp_path / "run"
    assert train(out, phantom_shards, "optim.epochs=1").returncode == 0  # checkpoints 3 and 5
    data = out / "ckpt" / "5" / "__0_0.distcp"
    whole = data.read_bytes()
    data.write_bytes(whole[: len(whole) // 2])
    proc = train(out, phantom_shards, "optim.epochs=1")
    assert proc.returncode == 0
    assert "Skipping checkpoint" in proc.stdout and f"Resuming from {out / 'ckpt' / '3'} at iteration 3" in proc.stdout
    # 5 was written again: complete, and its data file whole again (it was cut in half)
    assert invalid_reason(out / "ckpt" / "5") is None and data.stat().st_size == len(whole)
