"""`RunDir`: the one layout of a run folder, shared by the trainer, the converter, the evaluations and the launchers.

    OUT/config.yaml                  resolved pretraining config
    OUT/log.txt, training_metrics.jsonl, tb/
    OUT/ckpt/<iteration>/            sharded checkpoints (COMPLETE.json marks a whole one)
    OUT/eval/training_<it>/teacher_checkpoint.pth   periodic teacher exports
    OUT/teacher.pth (+ teacher.json) the converted teacher backbone
    OUT/eval/<name>/                 one evaluation: results.json, summary.md, figures
    OUT/eval/comparison.md           the table of all evaluations of the run
    OUT/jobs.json, submitit/         the launch (launchers only)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dinov3_us.checkpointer.checkpointer import complete_checkpoints


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
        """The converted teacher backbone (official key format), `teacher.json` beside it."""
        return self.root / "teacher.pth"

    @property
    def jobs(self) -> Path:
        """The launch record (`launchers/`)."""
        return self.root / "jobs.json"

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

    @classmethod
    def of_checkpoint(cls, ckpt: str | os.PathLike) -> RunDir:
        """The run a checkpoint folder `OUT/ckpt/<iteration>` belongs to."""
        return cls(Path(os.path.abspath(ckpt)).parent.parent)
