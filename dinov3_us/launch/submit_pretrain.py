r"""Pretrain -> evaluate as a chain of SLURM jobs (or the same chain locally), from one command.

    python launchers/submit_pretrain.py --nodes 4 --gpus-per-node 8 --config-file configs/train/vitb16_fetalus.yaml \
        --output-dir runs/vitb16 [--partition P --account A --qos Q --timeout MIN ...] [key=value ...]
    python launchers/submit_pretrain.py --cluster local --config-file configs/train/tiny_cpu.yaml \
        --output-dir runs/demo train.dataset_path=data/phantom:train

Jobs: (1) pretraining on N nodes x G tasks (one per GPU; with runtime.device=cpu, G processes per
node), torch.distributed from SLURM's variables, checkpointed and requeued on USR2 (90 s before the
time limit, up to --max-num-timeout times) and on preemption, resuming from the latest checkpoint;
when it completes, it writes OUT/teacher.pth from the checkpoint --eval-checkpoint picks; (2) one
job per evaluation of OUT/teacher.pth, after (1) succeeded. A failed job cancels the jobs after it.
Without --eval-config: a linear probe and kNN on the labelled train/val/test splits of the
pretraining shards.

Writes OUT/jobs.json (ids, states, commands, logs; kept current). Without `srun` on PATH, runs the
chain here. Exit codes: 0 submitted (or, when waiting / local, all jobs completed), 1 a job failed,
2 a problem found before submission (nothing was submitted).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from dinov3_us.configs.config import split_overrides
from dinov3_us.configs.keys import TEACHER_CHECKPOINTS
from dinov3_us.fileio import ensure_writable_dir
from dinov3_us.launch.cluster import ClusterOptions, Resources, add_cluster_args
from dinov3_us.launch.execute import Launch, plan_and_execute
from dinov3_us.launch.plan import (
    add_eval_args,
    check_output_dir,
    labelled_shards,
    launch_cluster,
    launch_resources,
    load_pretrain_config,
    model_info_from_config,
    parse_eval_requests,
    plan_evals,
    pretrain_chain,
)
from dinov3_us.run_dir import RunDir

logger = logging.getLogger("dinov3_us")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", help="pretraining YAML (e.g. configs/train/vitb16_fetalus.yaml)")
    p.add_argument("--output-dir", required=True, help="run folder: config, checkpoints, logs, teacher, evaluations")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir even though its config differs from this one")
    p.add_argument("--no-eval", action="store_true", help="pretrain only (it still writes OUT/teacher.pth)")
    p.add_argument("--eval-checkpoint", choices=TEACHER_CHECKPOINTS, default=None,
                   help="the checkpoint the pretraining writes to OUT/teacher.pth and the evaluations take: best "
                        "(on the run's downstream monitor), latest, or auto (best where the monitor marked one, else "
                        "the final); the override evaluation.teacher_checkpoint=..., default: the config's (auto)")
    add_eval_args(p)
    add_cluster_args(p, timeout_min=2800)
    p.add_argument("overrides", nargs="*", help="pretraining config overrides section.key=value")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse; `key=value` words written after --eval-config are config overrides, not evaluations."""
    args = build_parser().parse_intermixed_args(argv)
    words = sys.argv[1:] if argv is None else argv
    args.command_line = shlex.join(["python", "launchers/submit_pretrain.py", *words])
    if args.eval_config:
        eval_configs, moved = split_overrides(args.eval_config)
        args.eval_config = eval_configs or None
        args.overrides = [*args.overrides, *moved]
    if args.eval_checkpoint is not None:
        args.overrides = [*args.overrides, f"evaluation.teacher_checkpoint={args.eval_checkpoint}"]
    return args


def plan(args: argparse.Namespace) -> Launch:
    """Check everything and build the chain (raises DinoUSError; nothing is submitted)."""
    cluster, notes = launch_cluster(args)
    cfg = load_pretrain_config(args.config_file, args.overrides)
    run = RunDir(args.output_dir)
    out = ensure_writable_dir(run.root, "--output-dir", create=False)
    note = check_output_dir(out, cfg, args.resume)
    if note:
        notes.append(note)
    main, gpu, res_notes = launch_resources(args, cluster, out, cfg.runtime.device, args.nodes)
    notes += res_notes
    side = Resources(1, main.tasks_per_node if gpu else 1, main.gpus_per_node if gpu else 0, args.eval_timeout)
    evals = []
    if not args.no_eval:
        requests = parse_eval_requests(args.eval_config)
        default_data = labelled_shards(cfg.train.dataset_path, args.eval_override)
        if args.eval_config is None and default_data is None:
            notes.append(f"no evaluation: the pretraining shards ({cfg.train.dataset_path}) have no labelled "
                         "train/val/test splits; give --eval-config (or data.label_key via --eval-override)")
        else:
            evals = plan_evals(requests, run.teacher, run, os.getcwd(), default_data, args.eval_override,
                               model_info_from_config(cfg))
    jobs = pretrain_chain(args.config_file, args.overrides, run, os.getcwd(), main, side, evals,
                          allow_config_change=args.resume)
    return Launch("dinov3_us pretraining", cluster, out, jobs, ClusterOptions.from_args(args),
                  args.command_line, notes)


def main(argv: list[str] | None = None) -> int:
    """Parse, check, then dry-run / submit / run; returns the exit code."""
    args = parse_args(argv)
    return plan_and_execute(plan, args)


if __name__ == "__main__":
    sys.exit(main())
