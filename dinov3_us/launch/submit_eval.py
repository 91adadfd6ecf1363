r"""The evaluation part alone: (convert ->) linear probe, kNN, ... on a teacher file, a run or a checkpoint.

    python launchers/submit_eval.py --weights runs/vitb16/teacher.pth --dataset data/fpdb_brain --output-dir runs/ev
    python launchers/submit_eval.py --weights runs/vitb16/ckpt/124999 \
        --eval-config configs/eval/fpdb_brain_planes.yaml --output-dir runs/vitb16 --gpus-per-node 8
    python launchers/submit_eval.py --weights runs/vitb16 --dataset data/fpdb_brain --output-dir runs/vitb16 \
        --cluster local

--weights is what `dinov3_us.weights.resolve.resolve_weights` resolves: a teacher file (exported or
converted, or an official DINOv3 .pth), an HF folder, a checkpoint folder OUT/ckpt/<iteration>, or a
run folder OUT (the checkpoint --checkpoint picks; auto: the one a completed run wrote to its
teacher.pth). A weights file is evaluated as it is; a checkpoint that is not converted yet (a
mid-run one, or another than the run's teacher.pth holds) is first converted to OUTPUT/teacher.pth by
its own job, which the evaluations wait for: a conversion needs no GPU and reads the shared
checkpoint, so it runs once, in a small job, rather than in every evaluation job. One job per evaluation
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

from dinov3_us.configs import load_config
from dinov3_us.errors import DinoUSError
from dinov3_us.fileio import ensure_writable_dir
from dinov3_us.launch.cluster import ClusterOptions, LaunchError, Resources, add_cluster_args
from dinov3_us.launch.execute import Launch, plan_and_execute
from dinov3_us.launch.plan import (
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
from dinov3_us.launch.stages import ConvertJob
from dinov3_us.run_dir import RunDir
from dinov3_us.weights.resolve import SELECT, Weights, resolve_weights


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True,
                   help="teacher .pth (exported / converted / official), HF folder, checkpoint folder OUT/ckpt/<it>, "
                        "or run folder OUT (see --checkpoint)")
    p.add_argument("--checkpoint", choices=SELECT, default="auto",
                   help="of a run folder: auto (default: the one its teacher.pth holds, the best on its downstream "
                        "monitor where one is marked, else the latest), best, or latest")
    p.add_argument("--dataset", help="labelled shards folder (tools/build_dataset.py) for the default linear probe "
                                     "and kNN on its train/val/test splits")
    p.add_argument("--output-dir", required=True, help="evaluations go to OUTPUT/eval/<name>/; jobs.json here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where evaluations run: auto (the partition's GPUs on SLURM) | cpu | cuda")
    add_eval_args(p, default_data="--dataset")
    add_cluster_args(p, timeout_min=240, pretraining=False)
    return p


def weights_and_info(weights: str, select: str = "auto") -> tuple[Weights, dict | None]:
    """What --weights names (`dinov3_us.weights.resolve.resolve_weights`) and the model info that sizes the
    evaluations: from the file's sidecar, or from the run's config for a checkpoint not converted yet."""
    found = resolve_weights(weights, select)
    if found.file is not None:
        return found, model_info_from_teacher(found.file) if found.file.is_file() else None
    info = None
    if found.run.config.is_file():
        try:
            info = model_info_from_config(load_config(found.run.config))
        except DinoUSError as err:
            raise LaunchError(f"--weights {weights}: the run's {found.run.config} does not validate: {err}") from None
    return found, info


def plan(args: argparse.Namespace) -> Launch:
    """Check everything and build the jobs (raises DinoUSError; nothing is submitted)."""
    cluster, notes = launch_cluster(args)
    launch = RunDir(args.output_dir)
    out = ensure_writable_dir(launch.root, "--output-dir", create=False)
    found, info = weights_and_info(args.weights, args.checkpoint)
    ckpt, teacher = (found.checkpoint, None) if found.file is None else (None, found.file)
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
