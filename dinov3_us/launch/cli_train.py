"""DINOv3 pretraining (`tools/train.py`, installed as `dinov3us-train`):

    torchrun --nproc_per_node G tools/train.py --config-file CFG --output-dir OUT [key=value ...]

Also runs under SLURM's `srun` (SLURM_* variables) and as a single plain process. Resumes from the
latest complete checkpoint in `OUT/ckpt/` by itself. Iterations = `optim.epochs` x
`train.OFFICIAL_EPOCH_LENGTH`. Refused (exit 2, nothing written): a folder another training is using,
a folder whose run has another config (unless --allow-config-change), checkpoints that exist but none
of which can be used (unless --start-over). Exit codes: 0 done, 2 user error (bad config, data,
weights or run folder), 75 preempted (USR1/USR2/TERM: checkpointed; requeue me). Under torchrun a
worker's 75 becomes torchrun's 1: a SLURM script run through torchrun tells a preemption from a
failure by the last line of OUT/log.txt ("stopped after N/M iterations (exit code 75)"); `srun`
with one task per GPU (no torchrun) passes 75 through.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dinov3_us.configs import Config, load_config
from dinov3_us.errors import DinoUSError
from dinov3_us.eval.downstream import DownstreamMonitor
from dinov3_us.eval.run_report import write_run_report
from dinov3_us.train.trainer import pretrain


def train(cfg: Config, run_dir: str | Path, *, allow_config_change: bool = False, start_over: bool = False) -> int:
    """`pretrain()` with the downstream monitor and the run report of `dinov3_us.eval` plugged in: what every
    entry point runs (`tools/train.py`, the launchers' pretraining job). The trainer does not import the
    evaluation stage itself (`dinov3_us/__init__.py`'s layering)."""
    return pretrain(cfg, run_dir, allow_config_change=allow_config_change, start_over=start_over,
                    monitor=DownstreamMonitor.build, report=write_run_report)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, and return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=None, help="experiment YAML (e.g. configs/train/vitb16_fetalus.yaml)")
    parser.add_argument("--output-dir", required=True, help="run folder: config, checkpoints, logs, exports")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="continue the run in --output-dir although its config.yaml differs from this config")
    parser.add_argument("--start-over", action="store_true",
                        help="when OUT/ckpt holds checkpoints none of which can be used, move them to "
                             "OUT/ckpt/unusable-<time>/ and train from iteration 0 (default: stop, exit 2)")
    parser.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    try:
        return train(load_config(args.config_file, args.overrides), args.output_dir,
                     allow_config_change=args.allow_config_change, start_over=args.start_over)
    except DinoUSError as err:
        print(f"error (rank {os.environ.get('RANK', '0')}): {err}", file=sys.stderr)
        return 2

