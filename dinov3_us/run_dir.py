"""`RunDir`: the one layout of a run folder, shared by the trainer, the converter, the evaluations and the launchers.

    OUT/config.yaml                  resolved pretraining config
    OUT/log.txt, training_metrics.jsonl, tb/
    OUT/ckpt/<iteration>/            sharded checkpoints (COMPLETE.json marks a whole one)
    OUT/ckpt/best.json               the best checkpoint on the downstream monitor (iteration, metric, score)
    OUT/eval/training_<it>/teacher_checkpoint.pth   periodic teacher exports
    OUT/teacher.pth (+ teacher.json) the teacher backbone a completed run writes (evaluation.teacher_checkpoint)
    OUT/eval/<name>/                 one evaluation: results.json, summary.md, figures
    OUT/eval/comparison.md           the table of all evaluations of the run
    OUT/jobs.json, submitit/         the launch (launchers only)
    OUT/.train.lock                  held (flock) by the training that writes into OUT
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dinov3_us.checkpointer.checkpointer import best_checkpoint, complete_checkpoints
from dinov3_us.errors import ConfigError


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder (nothing is created until a stage writes there); a path-like of its root."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(os.path.abspath(root)))  # a RunDir is path-like too

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def config(self) -> Path:
        """The resolved pretraining config."""
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        """The pretraining log (rank 0)."""
        return self.root / "log.txt"

    @property
    def metrics(self) -> Path:
        """One JSON line per logged iteration."""
        return self.root / "training_metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files."""
        return self.root / "tb"

    @property
    def ckpt(self) -> Path:
        """The checkpoints folder (`<iteration>/` each)."""
        return self.root / "ckpt"

    @property
    def teacher(self) -> Path:
        """The teacher backbone (official key format) that a completed run writes, `teacher.json` beside it."""
        return self.root / "teacher.pth"

    @property
    def jobs(self) -> Path:
        """The launch record (`launchers/`)."""
        return self.root / "jobs.json"

    @property
    def lock_file(self) -> Path:
        """Held by the training that writes into this folder (`training_lock`)."""
        return self.root / ".train.lock"

    @property
    def report(self) -> Path:
        """The table of every evaluation of the run."""
        return self.root / "eval" / "comparison.md"

    def eval_dir(self, name: str) -> Path:
        """Where evaluation `name` writes results.json, summary.md and its figures."""
        return self.root / "eval" / name

    def export(self, iteration: int) -> Path:
        """The teacher exported during training at `iteration` (`train.export_period`)."""
        return self.root / "eval" / f"training_{iteration}" / "teacher_checkpoint.pth"

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None (incomplete ones are skipped with a WARNING)."""
        found = complete_checkpoints(self.ckpt)
        return found[0] if found else None

    def best(self) -> tuple[Path, dict] | None:
        """(folder, record) of the best checkpoint on the downstream monitor, or None."""
        return best_checkpoint(self.ckpt)

    @classmethod
    def of_checkpoint(cls, ckpt: str | os.PathLike) -> RunDir:
        """The run a checkpoint folder `OUT/ckpt/<iteration>` belongs to."""
        return cls(Path(os.path.abspath(ckpt)).parent.parent)


@contextlib.contextmanager
def training_lock(run: RunDir) -> Iterator[None]:
    """Hold `run`'s lock for a training (one process: rank 0); ConfigError when another process holds it.

    An advisory `flock`: the kernel drops it when the holder exits, also by a crash or kill -9, so a
    dead run never leaves the folder locked. The holder writes who it is into the file for the message.
    """
    run.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"{run.root} is in use by another training ({holder}): wait for it to end, or use "
                              "another --output-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        yield
    finally:
        os.close(fd)
