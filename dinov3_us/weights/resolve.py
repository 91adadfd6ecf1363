"""What a path given as weights names: the one resolver of `--weights`, `--pretrained-weights` and the converter.

`resolve_weights(path, select)` -> `Weights(file, checkpoint, run)`:

    a weights file (.pth/.safetensors) or an HF folder   file = path
    a checkpoint folder OUT/ckpt/<it>                    checkpoint = it; file = OUT/teacher.pth when its
                                                         sidecar's `iteration` is <it>, else None
    a run folder OUT                                     checkpoint = the one `select` picks
                                                         (`select_checkpoint`); file = OUT/teacher.pth when it
                                                         holds that checkpoint (or the run has no checkpoint)

`file` None means "a checkpoint not converted yet": an evaluation refuses it (`Weights.require_file`
names the `tools/convert_checkpoint.py` command, so that results always name the sha256 of a file),
the converter and `submit_eval.py`'s conversion job convert `checkpoint`. Every other bad input is one
`CheckpointError` raised here. `select_checkpoint` is the one rule for which checkpoint of a run stands
for it: the trainer's `OUT/teacher.pth` (`evaluation.teacher_checkpoint`) follows it too.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dinov3_us.checkpointer.checkpointer import MARKER, checkpoint_folders, invalid_reason
from dinov3_us.configs.keys import TEACHER_CHECKPOINTS
from dinov3_us.errors import CheckpointError
from dinov3_us.run_dir import RunDir
from dinov3_us.weights.hf import is_hf
from dinov3_us.weights.sidecar import teacher_iteration

logger = logging.getLogger("dinov3_us")

SELECT = TEACHER_CHECKPOINTS  # auto | best | latest: which checkpoint of a run folder


@dataclass(frozen=True)
class Weights:
    """What `resolve_weights` found: a loadable `file` and/or the DCP `checkpoint` it stands for, and its `run`."""

    path: Path  # as given, absolute
    file: Path | None  # a weights file or HF folder to load; None: `checkpoint` is not converted
    checkpoint: Path | None  # the complete checkpoint folder named or chosen; None: a plain weights file
    run: RunDir | None  # the run folder `checkpoint` (or the run's teacher.pth) belongs to

    def require_file(self) -> Path:
        """`file`, or the `CheckpointError` naming the conversion command."""
        if self.file is not None:
            return self.file
        held = teacher_iteration(self.run.teacher)
        other = f" ({self.run.teacher} holds iteration {held})" if held is not None else ""
        what = "checkpoint folder" if self.path == self.checkpoint else "run folder"
        raise CheckpointError(f"{self.path} is a {what} without its converted teacher{other}: convert it first with "
                              f"tools/convert_checkpoint.py {self.checkpoint}")


def select_checkpoint(run: RunDir, select: str = "auto") -> Path | None:
    """The checkpoint of `run` that stands for it: `latest` (the newest complete one), `best` (the best on the
    downstream monitor, `OUT/ckpt/best.json`) or `auto` (the best where one is marked, else the latest); None
    when the run has none of that kind."""
    if select not in SELECT:
        raise CheckpointError(f"checkpoint selection {select!r}: expected one of {', '.join(SELECT)}")
    best = run.best() if select in ("best", "auto") else None
    if best is not None or select == "best":
        return best[0] if best else None
    return run.latest()


def _is_checkpoint_folder(path: Path) -> bool:
    return (path / MARKER).exists() or (path.parent.name == "ckpt" and path.name.isdigit())


def _is_run_folder(path: Path) -> bool:
    run = RunDir(path)
    return run.ckpt.is_dir() or run.config.is_file() or run.teacher.is_file()


def resolve_weights(path: str | os.PathLike, select: str = "auto") -> Weights:
    """What `path` names (see the module doc); `select` picks a run folder's checkpoint (`select_checkpoint`).

    Raises `CheckpointError` (one line naming `path`) for: nothing at `path`; a checkpoint folder that does
    not exist (naming the ones that do) or is not complete; `select="best"` on a checkpoint folder, or on a
    run without a best checkpoint; a run folder without a complete checkpoint or teacher.pth; any other folder.
    """
    if select not in SELECT:
        raise CheckpointError(f"checkpoint selection {select!r}: expected one of {', '.join(SELECT)}")
    path = Path(os.path.abspath(Path(path).expanduser()))
    if path.is_file() or is_hf(path):
        return Weights(path, path, None, None)
    if _is_checkpoint_folder(path):
        return _checkpoint_folder(path, select)
    if not path.exists():
        if checkpoint_folders(path.parent):
            return _checkpoint_folder(path, select)  # lists the checkpoints there
        raise CheckpointError(f"weights file or folder {path} does not exist")
    if not (path.is_dir() and _is_run_folder(path)):
        raise CheckpointError(f"{path} is a folder, not a weights file (expected a .pth / .safetensors file, an HF "
                              "folder, a run folder or a checkpoint folder OUT/ckpt/<iteration>)")
    run = RunDir(path)
    ckpt = select_checkpoint(run, select)
    converted = teacher_iteration(run.teacher)
    if ckpt is None:
        if select == "best":
            raise CheckpointError(f"{path} has no best checkpoint ({run.ckpt / 'best.json'}: the run had no "
                                  "downstream monitor, or none scored yet); use its latest checkpoint")
        if not run.teacher.is_file():
            raise CheckpointError(f"{path} is a run folder without a complete checkpoint in {run.ckpt} "
                                  "and without teacher.pth")
        logger.info("%s is a run folder without checkpoints: its %s", path, run.teacher.name)
        return Weights(path, run.teacher, None, run)
    best = run.best()
    why = (f"its best checkpoint {ckpt} on the downstream monitor ({best[1].get('metric')} "
           f"{best[1].get('score', float('nan')):.4f})" if best is not None and best[0] == ckpt
           else f"its latest complete checkpoint {ckpt}")
    file = run.teacher if converted == int(ckpt.name) else None
    logger.info("%s is a run folder: %s%s", path, why, f", converted to {file}" if file else " (not converted)")
    return Weights(path, file, ckpt, run)


def _checkpoint_folder(path: Path, select: str) -> Weights:
    if select == "best":
        raise CheckpointError(f"{path}: choosing the best checkpoint needs a run folder, not a checkpoint")
    if not path.exists():
        folders = checkpoint_folders(path.parent)
        complete = [p.name for _, p in folders if invalid_reason(p) is None]
        incomplete = [p.name for _, p in folders if p.name not in complete]
        available = ", ".join(complete) or "none"
        available += f" (incomplete: {', '.join(incomplete)})" if incomplete else ""
        raise CheckpointError(f"no such checkpoint {path}; available: {available}")
    reason = invalid_reason(path)
    if reason is not None:
        raise CheckpointError(f"{path} is not a complete checkpoint: {reason}")
    run = RunDir.of_checkpoint(path)
    file = run.teacher if path.name.isdigit() and teacher_iteration(run.teacher) == int(path.name) else None
    if file is not None:
        logger.info("%s is a checkpoint folder: its converted teacher %s", path, file)
    return Weights(path, file, path, run)
