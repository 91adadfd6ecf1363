"""tools/train.py and its run folder: one training per folder, no silent config change, no silent fresh start
over unusable checkpoints, a signal during start-up, the user's umask, a full disk. Real processes, real files."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from disks import tmpfs

REPO = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, str(REPO / "tools" / "train.py"), "--config-file", str(REPO / "configs/train/tiny_cpu.yaml")]
SHORT = ["optim.epochs=1", "train.OFFICIAL_EPOCH_LENGTH=4", "checkpointing.period=2", "train.log_period=1"]
pytestmark = pytest.mark.slow  # every test starts tools/train.py in a subprocess


def cmd(out: Path, data: Path, *extra: str) -> list[str]:
    return TRAIN + ["--output-dir", str(out), f"train.dataset_path={data}:train", *SHORT, *extra]


def train(out: Path, data: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd(out, data, *extra), capture_output=True, text=True, timeout=300, **kwargs)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_training_into_a_busy_folder_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, phantom_shards):
    out = tmp_path / "run"
    first = subprocess.Popen(cmd(out, phantom_shards, "optim.epochs=10"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(out / "training_metrics.jsonl", first)
        first.send_signal(signal.SIGSTOP)  # it holds the lock, mid-run, however long the second takes to start
        assert first.poll() is None, "the first training ended before the second started"
        second = train(out, phantom_shards, "optim.epochs=10")
        line = one_error_line(second)
        assert f"{out} is in use by another training (pid {first.pid} on" in line
    finally:
        first.kill()  # kill -9 (a stopped process too): the kernel drops the lock with the process
        first.wait()
    lines = len((out / "training_metrics.jsonl").read_text().splitlines())
    again = train(out, phantom_shards, "optim.epochs=10")
    assert again.returncode == 0, again.stderr[-2000:]
    iterations = [json.loads(x)["iteration"] for x in (out / "training_metrics.jsonl").read_text().splitlines()]
    assert iterations == sorted(set(iterations)) and len(iterations) >= lines  # no iteration logged twice


def test_resuming_with_another_config_is_refused_unless_allowed(tmp_path, phantom_shards):
    out = tmp_path / "run"
    assert train(out, phantom_shards).returncode == 0
    config = (out / "config.yaml").read_bytes()
    line = one_error_line(train(out, phantom_shards, "optim.lr=0.002"))
    assert "holds a run with another config (optim.lr: 0.01 -> 0.002)" in line and "--allow-config-change" in line
    assert (out / "config.yaml").read_bytes() == config  # nothing written
    allowed = train(out, phantom_shards, "optim.lr=0.002", "--allow-config-change")
    assert allowed.returncode == 0 and "continuing" in allowed.stdout + allowed.stderr
    assert "lr: 0.002" in (out / "config.yaml").read_text()


def test_unusable_checkpoints_stop_the_run_unless_told_to_start_over(tmp_path, phantom_shards):
    out = tmp_path / "run"
    assert train(out, phantom_shards).returncode == 0
    for marker in (out / "ckpt").glob("*/COMPLETE.json"):
        marker.unlink()
    kept = sorted(p.name for p in (out / "ckpt").iterdir())
    line = one_error_line(train(out, phantom_shards))
    assert "none is complete" in line and "--start-over" in line
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == kept  # nothing overwritten
    over = train(out, phantom_shards, "--start-over")
    assert over.returncode == 0, over.stderr[-2000:]
    aside = next((out / "ckpt").glob("unusable-*"))
    assert sorted(p.name for p in aside.iterdir()) == kept
    assert (out / "ckpt" / "3" / "COMPLETE.json").is_file()


def test_a_preemption_signal_during_start_up_exits_for_requeue(tmp_path, phantom_shards):
    out = tmp_path / "run"
    proc = subprocess.Popen(cmd(out, phantom_shards), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(out / ".train.lock", proc)  # the handlers are in place before the folder is touched
    proc.send_signal(signal.SIGUSR2)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, output[-3000:]
    assert "stopped after" in (out / "log.txt").read_text()


def test_compile_without_a_cpp_compiler_is_one_line_before_any_file(tmp_path, phantom_shards):
    """train.compile on CPU needs a C++ compiler: where none is on PATH, one error line and no run folder."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "CXX"} | {"PATH": str(tmp_path / "empty-bin")}
    line = one_error_line(train(out, phantom_shards, "train.compile=true", env=env))
    assert "train.compile" in line and "C++ compiler" in line
    assert not out.exists() or not any(out.iterdir())


def test_files_respect_the_umask(tmp_path, phantom_shards):
    out = tmp_path / "run"
    proc = train(out, phantom_shards, "evaluation.eval_period_iterations=2", preexec_fn=lambda: os.umask(0o027))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in [out / "config.yaml", out / "ckpt" / "3" / "COMPLETE.json", out / "training_metrics.jsonl",
                 *out.glob("eval/training_*/teacher_checkpoint.*")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def space_numbers(line: str) -> tuple[int, int]:
    """(MiB a checkpoint needs, MiB free when the save began) from the no-space error line."""
    m = re.search(r"a checkpoint needs about (\d+) MiB, (\d+) MiB was free when the save began", line)
    assert m, line
    return int(m.group(1)), int(m.group(2))


def test_a_disk_that_fills_at_a_later_save_is_one_line_and_leaves_the_last_checkpoint(tmp_path, phantom_shards):
    with tmpfs(tmp_path / "small", "7m") as small:
        out = small / "run"
        proc = train(out, phantom_shards, "optim.epochs=2", "checkpointing.max_to_keep=3")
        line = one_error_line(proc)
        assert "no space left in" in line and "nothing committed" in line
        needed, free = space_numbers(line)
        assert free < needed and needed >= 1  # the size of checkpoint 1, measured
        assert f"the latest checkpoint is {out / 'ckpt' / '1'}" in line
        assert not list((out / "ckpt").glob(".tmp-*"))
        assert (out / "ckpt" / "1" / "COMPLETE.json").is_file()
        warnings = [x for x in (out / "log.txt").read_text().splitlines() if "less than a checkpoint needs" in x]
        assert len(warnings) == 1, warnings  # warned once, before the save that failed


def test_a_disk_too_small_for_the_first_checkpoint_says_so_with_both_numbers(tmp_path, phantom_shards):
    with tmpfs(tmp_path / "small", "2m") as small:
        out = small / "run"
        line = one_error_line(train(out, phantom_shards))
        assert "no space left in" in line and "there is no earlier checkpoint" in line, line
        needed, free = space_numbers(line)
        assert free < needed  # the estimate from the parameter and optimizer bytes
        assert not list((out / "ckpt").glob(".tmp-*")) and not list((out / "ckpt").glob("[0-9]*"))


def test_a_read_only_output_folder_is_one_line_before_any_work(read_only_dir, phantom_shards):
    line = one_error_line(train(read_only_dir / "run", phantom_shards))
    assert line == f"error (rank 0): --output-dir {read_only_dir / 'run'}: cannot write there (Read-only file system)"
