r"""The evaluation part alone: (convert ->) linear probe, kNN, ... on an existing checkpoint or teacher file.

    python launchers/submit_eval.py --weights runs/vitb16/teacher.pth --dataset data/fpdb_brain --output-dir runs/ev
    python launchers/submit_eval.py --weights runs/vitb16/ckpt/124999 \
        --eval-config configs/eval/fpdb_brain_planes.yaml --output-dir runs/vitb16 --gpus-per-node 8
    python launchers/submit_eval.py --weights runs/vitb16 --dataset data/fpdb_brain --output-dir runs/vitb16 \
        --cluster local

--weights is a teacher file (exported or converted, or an official DINOv3 .pth), a checkpoint folder
OUT/ckpt/<iteration>, or a run folder OUT (its latest checkpoint); a checkpoint is first converted
to OUTPUT/teacher.pth by its own job, which the evaluations wait for. One job per evaluation
(--eval-config; default linear probe and kNN on --dataset's labelled train/val/test splits), each
writing OUTPUT/eval/<name>/results.json, summary.md and confusion_matrix.png; the table of all of
them goes to OUTPUT/eval/comparison.md. OUTPUT/jobs.json tracks the jobs. Exit codes as
submit_pretrain.py: 0, 1 a job failed, 2 nothing submitted.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinov3_us.configs import Config  # noqa: E402
from dinov3_us.fileio import ensure_writable_dir  # noqa: E402
from dinov3_us.run_dir import RunDir  # noqa: E402
from launchers.common import ClusterOptions, LaunchError, Resources, add_cluster_args  # noqa: E402
from launchers.launch import Launch, plan_and_execute  # noqa: E402
from launchers.plan import (  # noqa: E402
    LABELLED_SPLITS,
    JobSpec,
    add_eval_args,
    labelled_shards,
    launch_cluster,
    launch_resources,
    model_info_from_config,
    model_info_from_teacher,
    parse_eval_requests,
    plan_evals,
)
from launchers.stages import ConvertJob  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True,
                   help="teacher .pth (exported / converted / official), checkpoint folder OUT/ckpt/<it>, or run "
                        "folder OUT (see --checkpoint)")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="of a run folder: its latest complete checkpoint (default), or the best on its downstream "
                        "monitor (OUT/ckpt/best.json)")
    p.add_argument("--dataset", help="labelled shards folder (tools/build_dataset.py) for the default linear probe "
                                     "and kNN on its train/val/test splits")
    p.add_argument("--output-dir", required=True, help="evaluations go to OUTPUT/eval/<name>/; jobs.json here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where evaluations run: auto (the partition's GPUs on SLURM) | cpu | cuda")
    add_eval_args(p, default_data="--dataset")
    add_cluster_args(p, timeout_min=240, pretraining=False)
    return p


def resolve_weights(weights: str, select: str = "latest") -> tuple[Path | None, Path | None, dict | None]:
    """(checkpoint to convert or None, teacher file or None, model info) of a --weights argument (a run folder's
    checkpoint chosen by `select`: latest or best)."""
    path = RunDir(weights).root
    if path.is_file():
        return None, path, model_info_from_teacher(path)
    if not path.is_dir():
        raise LaunchError(f"--weights {weights}: no such file or folder")
    if RunDir(path).ckpt.is_dir():
        run = RunDir(path)
        if select == "best":
            best = run.best()
            if best is None:
                raise LaunchError(f"--weights {weights} --checkpoint best: no best checkpoint in {run.ckpt} (the run "
                                  "had no downstream monitor); use --checkpoint latest")
            ckpt = best[0]
        else:
            ckpt = run.latest()
        if ckpt is None:
            raise LaunchError(f"--weights {weights}: no complete checkpoint in {run.ckpt}")
    else:
        from dinov3_us.checkpointer.checkpointer import invalid_reason

        reason = invalid_reason(path)
        if reason is not None:
            raise LaunchError(f"--weights {weights}: not a complete checkpoint folder ({reason})")
        ckpt, run = path, RunDir.of_checkpoint(path)
    info = None
    cfg_path = run.config
    if cfg_path.is_file():
        try:
            info = model_info_from_config(Config.wrap(yaml.safe_load(cfg_path.read_text())))
        except (KeyError, AttributeError, TypeError, yaml.YAMLError):
            info = None
    return ckpt, None, info


def plan(args: argparse.Namespace) -> Launch:
    """Check everything and build the jobs (raises DinoUSError; nothing is submitted)."""
    cluster, notes = launch_cluster(args)
    launch = RunDir(args.output_dir)
    out = ensure_writable_dir(launch.root, "--output-dir", create=False)
    ckpt, teacher, info = resolve_weights(args.weights, args.checkpoint)
    default_data = None
    if args.dataset:
        default_data = labelled_shards(args.dataset, args.eval_override)
        if default_data is None:
            raise LaunchError(f"--dataset {args.dataset}: not a shards folder with labelled "
                              f"{'/'.join(LABELLED_SPLITS)} splits (no class labels: add --eval-override "
                              "data.label_key=... data.label_bins=N)")
    main, gpu, res_notes = launch_resources(args, cluster, out, args.device, 1)
    notes += res_notes
    jobs: list[JobSpec] = []
    if ckpt is not None:
        teacher = launch.teacher
        jobs.append(JobSpec("convert", "convert", ConvertJob("convert", launch, str(Path.cwd()), checkpoint=ckpt),
                            Resources(1, 1, 0, args.timeout), [], [str(teacher)]))
    evals = plan_evals(parse_eval_requests(args.eval_config), teacher, launch, str(Path.cwd()), default_data,
                       args.eval_override, info)
    for spec in evals:
        spec.resources = main
        spec.depends_on = ["convert"] if ckpt is not None else []
        if args.device != "auto":
            spec.task.overrides.append(f"runtime.device={args.device}")
    jobs += evals
    command = shlex.join(["python", "launchers/submit_eval.py", *args.argv])
    return Launch("dinov3_us evaluation", cluster, out, jobs, ClusterOptions.from_args(args), command, notes)


def main(argv: list[str] | None = None) -> int:
    """Parse, check, then dry-run / submit / run; returns the exit code."""
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return plan_and_execute(plan, args)


if __name__ == "__main__":
    sys.exit(main())
