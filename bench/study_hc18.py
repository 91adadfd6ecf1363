"""The study in miniature on real fetal ultrasound (HC18 + FETAL_PLANES_DB images from ../shared/data).

Does the project's own chain, with its own commands:
1. curate: `tools/build_dataset.py --source hc18 --task hc-terciles` (head-size terciles from the train
   split, subjects never straddle splits) and `--source fpdb --task brain-planes` (the 57 local images);
2. pretrain: `tools/train.py` with the preset `configs/train/small_cpu.yaml` (or, `--recipe dinov3`, that
   preset with the official self-distillation knobs) on HC18 train + unlabelled + the FPDB images (no
   HC18 val/test image is seen), exporting the teacher every `--eval-every` iterations; the schedule's
   unit is `--epoch-length`, so how often it is evaluated does not change the recipe;
3. evaluate every export and a random initialisation of the same architecture: linear probe and kNN
   on the head-size terciles (train -> best head on val -> test) and the dense linear probe on the
   HC18 head masks (Dice);
4. compare each export with the random initialisation on the same test images (paired bootstrap,
   patients resampled) and write `bench/results/study_hc18_<recipe>.json` and `.png` (metrics vs pretraining
   iterations with 95% CIs, and the pretraining losses); `--results` moves both.

    python bench/study_hc18.py                      # small-data recipe, 2,400 iterations (about an hour here)
    python bench/study_hc18.py --recipe dinov3 --iterations 1200

The budget is `--iterations` (deterministic; the wall time is reported). Re-running resumes the
pretraining and reuses finished evaluations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dinov3_us.eval.paired import paired_difference  # noqa: E402
from dinov3_us.eval.predictions import load_predictions  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
PY = sys.executable
PRESET = REPO / "configs" / "train" / "small_cpu.yaml"
# Pretraining recipes: the small-data preset as shipped (configs/train/small_cpu.yaml, whose knobs
# bench/bench_selfdistill_onset.py and the README's "When self-distillation starts" explain), or that
# preset with the official DINOv3 self-distillation choices put back.
RECIPES = {
    # plain prototype layer (frozen for the first epoch), teacher temperature 0.04 -> 0.07, LayerScale 1e-5,
    # K = 1,024, lr 2e-3: its DINO/iBOT terms stay at ln K here
    "dinov3": ["dino.head_n_prototypes=1024", "ibot.head_n_prototypes=1024", "dino.head_norm_last_layer=false",
               "ibot.head_norm_last_layer=false", "optim.freeze_last_layer_epochs=1",
               "teacher.warmup_teacher_temp=0.04", "teacher.teacher_temp=0.07", "student.layerscale=1.0e-05",
               "optim.lr=0.002"],
    "small-data": [],
}
# (evaluation folder, metric, row key) of the paired comparisons with the random initialisation
PAIRED = [("eval_linear", "weighted_f1", "linear_weighted_f1"), ("eval_knn", "weighted_f1", "knn_weighted_f1"),
          ("eval_segmentation", "dice", "dice")]


def run(cmd: list[str], log: Path, threads: int | None = None) -> None:
    """Run a project command, its output appended to `log` (`threads`: its OMP_NUM_THREADS); raise with the
    log's tail on failure."""
    print("$", " ".join(cmd), flush=True)
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with log.open("a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}); see {log}:\n" + log.read_text()[-3000:])


def curate(out: Path, log: Path) -> tuple[Path, Path]:
    """HC18 (hc-terciles) and FPDB (brain planes) shards under OUT/data/."""
    hc18, fpdb = out / "data" / "hc18", out / "data" / "fpdb"
    if not (hc18 / "manifest.json").exists():
        run([PY, "tools/build_dataset.py", "--source", "hc18", "--task", "hc-terciles", "--root",
             str(SHARED / "hc18"), "--out", str(hc18), "--no-progress", "--workers", "2"], log)
    if not (fpdb / "manifest.json").exists():
        run([PY, "tools/build_dataset.py", "--source", "fpdb", "--task", "brain-planes", "--root",
             str(SHARED / "fpdb"), "--out", str(fpdb), "--no-progress"], log)
    return hc18, fpdb


def pretrain_overrides(args, hc18: Path, fpdb: Path) -> list[str]:
    """The study's overrides of the preset: data, size, budget and schedule, then the recipe and --set."""
    return [f"train.dataset_path={hc18}:train,unlabelled;{fpdb}", f"student.arch={args.arch}",
            f"train.batch_size_per_gpu={args.batch_size}", f"train.OFFICIAL_EPOCH_LENGTH={args.epoch_length}",
            f"optim.epochs={args.iterations // args.epoch_length}",
            f"evaluation.eval_period_iterations={args.eval_every}", f"checkpointing.period={args.eval_every}",
            f"train.num_workers={args.workers}", "train.log_period=20",
            *RECIPES[args.recipe], *args.set]


def pretrain(args, out: Path, hc18: Path, fpdb: Path, log: Path) -> float:
    """Run (or resume) the pretraining; returns its wall time in seconds."""
    start = time.perf_counter()
    run([PY, "tools/train.py", "--config-file", str(PRESET), "--output-dir", str(out / "pretrain"),
         *pretrain_overrides(args, hc18, fpdb)], log)
    return time.perf_counter() - start


def evaluate(weights: str, name: str, args, out: Path, hc18: Path, log: Path) -> dict:
    """Linear probe, kNN and dense probe of one initialisation; returns the headline metrics.

    Every non-random row also gets `<metric>_vs_random`: the paired difference to the random
    initialisation on the same test images, patients resampled (`dinov3_us.eval.paired`).
    """
    base = ["--pretrained-weights", weights, "--train-dataset", f"{hc18}:train", "--val-dataset", f"{hc18}:val",
            "--test-datasets", f"{hc18}:test", "--image-size", "64", "--no-progress"]
    if weights == "random":
        base += ["--arch", args.arch]
    results = {}
    for tool, extra in (("eval_linear", ["linear.epochs=30", "linear.n_last_blocks=[1,4]", "linear.losses=[ce]"]),
                        ("eval_knn", []), ("eval_segmentation", [])):
        folder = out / "eval" / name / tool
        if not (folder / "results.json").exists():
            run([PY, f"tools/{tool}.py", *base, "--output-dir", str(folder), *extra], log)
        results[tool] = json.loads((folder / "results.json").read_text())["metrics"]
    row = {"linear_weighted_f1": results["eval_linear"]["weighted_f1"],
            "linear_balanced_accuracy": results["eval_linear"]["balanced_accuracy"],
            "linear_weighted_f1_ci": results["eval_linear"].get("weighted_f1_ci"),
            "knn_weighted_f1": results["eval_knn"]["weighted_f1"],
            "knn_weighted_f1_ci": results["eval_knn"].get("weighted_f1_ci"),
            "knn_balanced_accuracy": results["eval_knn"]["balanced_accuracy"],
            "dice": results["eval_segmentation"]["dice"], "iou": results["eval_segmentation"]["iou"],
            "dice_ci": results["eval_segmentation"].get("dice_ci")}
    if weights != "random":
        for tool, metric, key in PAIRED:
            diff = paired_difference(load_predictions(out / "eval" / "random" / tool),
                                     load_predictions(out / "eval" / name / tool), metric=metric, seed=0)
            row[f"{key}_vs_random"] = {k: diff[k] for k in ("difference", "ci", "p_not_better", "n_groups")}
    return row


def plot(rows: list[dict], metrics_file: Path, path: Path) -> None:
    """Each metric against pretraining iterations (95% CI as bars, random init dashed), and the losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("linear_weighted_f1", "linear_weighted_f1_ci", "linear probe, weighted F1"),
            ("knn_weighted_f1", "knn_weighted_f1_ci", "kNN, weighted F1"), ("dice", "dice_ci", "dense probe, Dice")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    trained = [r for r in rows if r["init"] == "pretrained"]
    random_row = next(r for r in rows if r["init"] == "random")
    for ax, (key, ci_key, title) in zip(axes, keys):
        its, values = [r["iteration"] for r in trained], [r[key] for r in trained]
        errors = None
        if ci_key and all(r.get(ci_key) for r in trained):
            errors = [[v - r[ci_key][0] for v, r in zip(values, trained)],
                      [r[ci_key][1] - v for v, r in zip(values, trained)]]
        ax.errorbar(its, values, yerr=errors, fmt="o-", capsize=3, label="ours (HC18+FPDB)")
        ax.axhline(random_row[key], color="gray", ls="--", label="random init")
        if ci_key and random_row.get(ci_key):
            ax.axhspan(*random_row[ci_key], color="gray", alpha=0.12)
        ax.set_title(title)
        ax.set_xlabel("pretraining iterations")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    log = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    k = yaml.safe_load((metrics_file.parent / "config.yaml").read_text())["dino"]["head_n_prototypes"]
    ax = axes[3]
    its = [r["iteration"] for r in log]
    for key, label in (("dino_global_crops_loss", "DINO loss (global crops)"),
                       ("dino_local_crops_loss", "DINO loss (local crops)"), ("target_entropy", "target entropy"),
                       ("teacher_entropy", "teacher entropy")):
        if key in log[0]:
            scale = math.log(k) if key.endswith("loss") else 1.0  # the entropies are logged already / ln K
            ax.plot(its, [r[key] / scale for r in log], label=label)
    ax.axhline(1.0, color="gray", ls=":", lw=1)
    ax.set_ylim(0.0, 1.15)
    ax.set_title(f"self-distillation, / ln K (K = {k}); 1 = uniform")
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.suptitle("HC18 head-size terciles and head masks: frozen features vs pretraining (test set, 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    """Curate, pretrain, evaluate, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2400)
    parser.add_argument("--eval-every", type=int, default=300, help="export and evaluate every N iterations")
    parser.add_argument("--epoch-length", type=int, default=300,
                        help="train.OFFICIAL_EPOCH_LENGTH: the unit of the recipe's warm-ups (independent of "
                             "--eval-every, so evaluating more or less often does not change the recipe)")
    parser.add_argument("--arch", default="vit_tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="small-data",
                        help="pretraining recipe (default: small-data)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra pretraining config override (repeatable), applied after the study's recipe")
    parser.add_argument("--output-dir", help="default: runs/study_hc18_<recipe>")
    parser.add_argument("--results", help="default: bench/results/study_hc18_<recipe>.json (the figure beside it)")
    args = parser.parse_args()
    args.output_dir = args.output_dir or str(REPO / "runs" / f"study_hc18_{args.recipe}")
    args.results = args.results or str(REPO / "bench" / "results" / f"study_hc18_{args.recipe}.json")
    if not (SHARED / "hc18").is_dir():
        print(f"{SHARED / 'hc18'} is absent: this study needs the real HC18 data", file=sys.stderr)
        return 2
    if args.iterations % args.eval_every or args.iterations % args.epoch_length:
        parser.error("--iterations must be a multiple of --eval-every and of --epoch-length")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "study.log"
    hc18, fpdb = curate(out, log)
    spent = out / "pretrain_wall_seconds.txt"  # summed over resumed invocations
    seconds = pretrain(args, out, hc18, fpdb, log) + (float(spent.read_text()) if spent.exists() else 0.0)
    spent.write_text(f"{seconds:.1f}\n")
    rows = [{"init": "random", "iteration": 0, **evaluate("random", "random", args, out, hc18, log)}]
    for it in range(args.eval_every - 1, args.iterations, args.eval_every):
        weights = out / "pretrain" / "eval" / f"training_{it}" / "teacher_checkpoint.pth"
        rows.append({"init": "pretrained", "iteration": it + 1,
                     **evaluate(str(weights), f"it{it + 1}", args, out, hc18, log)})
    figure = Path(args.results).with_suffix(".png")
    plot(rows, out / "pretrain" / "training_metrics.jsonl", figure)
    result = {"benchmark": "study_hc18", "command": "python bench/study_hc18.py " + " ".join(sys.argv[1:]),
              "arch": args.arch, "iterations": args.iterations, "batch_size": args.batch_size,
              "recipe": args.recipe, "preset": str(PRESET.relative_to(REPO)),
              "overrides": RECIPES[args.recipe] + args.set,
              "pretrain_wall_seconds": round(seconds, 1), "cores": os.cpu_count(), "machine": platform.machine(),
              "data": "HC18 (CC BY 4.0) hc-terciles + head masks; pretraining pool HC18 train+unlabelled and 57 "
                      "FETAL_PLANES_DB images (CC BY 4.0)",
              "rows": rows}
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=1))
    print(f"wrote {args.results} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
