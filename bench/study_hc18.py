"""The study in miniature on real fetal ultrasound (HC18 + FETAL_PLANES_DB images from ../shared/data).

Does the project's own chain, with its own commands:
1. curate: `tools/build_dataset.py --source hc18 --task hc-terciles` (head-size terciles from the train
   split, subjects never straddle splits) and `--source fpdb --task brain-planes` (the 57 local images);
2. pretrain: `tools/train.py` with the preset `configs/train/small_cpu.yaml` as shipped (or, `--recipe
   dinov3`, that preset with the official self-distillation knobs) on HC18 train + unlabelled + the FPDB
   images (no HC18 val/test image is seen), exporting the teacher every `--eval-every` iterations; the
   schedule's unit is `--epoch-length`, so how often it is evaluated does not change the recipe;
3. evaluate every export by the linear probe and kNN on the head-size terciles (train -> best head / k
   on val), and choose the export by the linear probe's **validation** weighted F1 (ties: the earlier);
4. report, for the chosen export only, its test figures (linear probe, kNN, and the dense linear probe
   on the HC18 head masks, Dice) against a random initialisation of exactly its architecture on the same
   test images (`report.baseline=random`: paired bootstrap, patients resampled). No test figure of any
   other export is looked at: `bench/results/study_hc18_<recipe>.json` holds the validation curve of
   every export and the test figures of the chosen one, with `.png` (validation vs iterations, the
   pretraining's self-distillation statistics).

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
import subprocess
import sys
import time
from pathlib import Path

import yaml
from stamp import REPO, stamp

SHARED = REPO.parent / "shared" / "data"
PY = sys.executable
PRESET = REPO / "configs" / "train" / "small_cpu.yaml"
# Pretraining recipes: the small-data preset as shipped (configs/train/small_cpu.yaml, whose knobs
# bench/bench_selfdistill_onset.py and docs/selfdistill_onset.md explain), or that
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


EVALS = {"eval_linear": ["linear.epochs=30", "linear.n_last_blocks=[1,4]", "linear.losses=[ce]"], "eval_knn": [],
         "eval_segmentation": []}


def evaluate(weights: Path, name: str, tools: list[str], out: Path, hc18: Path, log: Path, *extra: str) -> dict:
    """`tools` (eval_linear, eval_knn, eval_segmentation) on the export `weights`; {tool: results.json}."""
    base = ["--pretrained-weights", str(weights), "--train-dataset", f"{hc18}:train", "--val-dataset", f"{hc18}:val",
            "--test-datasets", f"{hc18}:test", "--image-size", "64", "--no-progress"]
    results = {}
    for tool in tools:
        folder = out / "eval" / name / tool
        if not (folder / "results.json").exists():
            run([PY, f"tools/{tool}.py", *base, "--output-dir", str(folder), *EVALS[tool], *extra], log)
        results[tool] = json.loads((folder / "results.json").read_text())
    return results


def validation_row(iteration: int, results: dict) -> dict:
    """What an export scores on HC18 val (all the choice may look at)."""
    return {"iteration": iteration,
            "linear_val_weighted_f1": results["eval_linear"]["val_metrics"]["weighted_f1"],
            "knn_val_weighted_f1": results["eval_knn"]["val_metrics"]["weighted_f1"],
            "knn_best_k": results["eval_knn"]["best_k"],
            "linear_best_head": results["eval_linear"]["best_head"]["name"]}


def test_row(results: dict) -> dict:
    """The chosen export's test figures and the paired difference with its random initialisation."""
    row = {}
    for tool, key in (("eval_linear", "linear"), ("eval_knn", "knn"), ("eval_segmentation", "dense")):
        m, vs = results[tool]["metrics"], results[tool]["vs_random"]
        metric = "dice" if "dice" in m else "weighted_f1"
        row[key] = {"metric": metric, "value": m[metric], "ci": m.get(f"{metric}_ci"), "random": vs["a"],
                    "difference": vs["difference"], "difference_ci": vs["ci"], "p_not_better": vs["p_not_better"],
                    "n_groups": vs["n_groups"], **({"chance": vs["chance"]} if "chance" in vs else {})}
    return row


def plot(rows: list[dict], chosen: int, metrics_file: Path, path: Path) -> None:
    """Validation weighted F1 of every export (the chosen one starred), and the pretraining's statistics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    ax = axes[0]
    its = [r["iteration"] for r in rows]
    for key, label in (("linear_val_weighted_f1", "linear probe"), ("knn_val_weighted_f1", "kNN")):
        ax.plot(its, [r[key] for r in rows], "o-", label=label)
    best = next(r for r in rows if r["iteration"] == chosen)
    ax.plot([chosen], [best["linear_val_weighted_f1"]], marker="*", ms=15, color="gold", mec="black", ls="none",
            label=f"chosen (iteration {chosen})")
    ax.set_title("HC18 head-size terciles, validation weighted F1")
    ax.set_xlabel("pretraining iterations")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    log = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    k = yaml.safe_load((metrics_file.parent / "config.yaml").read_text())["dino"]["head_n_prototypes"]
    ax = axes[1]
    its = [r["iteration"] for r in log]
    for key, label in (("dino_global_crops_loss", "DINO loss (global crops)"),
                       ("dino_local_crops_loss", "DINO loss (local crops)"), ("target_entropy", "target entropy")):
        if key in log[0]:
            scale = math.log(k) if key.endswith("loss") else 1.0  # the entropies are logged already / ln K
            ax.plot(its, [r[key] / scale for r in log], label=label)
    ax.axhline(1.0, color="gray", ls=":", lw=1)
    ax.set_ylim(0.0, 1.15)
    ax.set_title(f"self-distillation, / ln K (K = {k}); 1 = uniform")
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
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
    rows, exports = [], {}
    for it in range(args.eval_every - 1, args.iterations, args.eval_every):
        exports[it + 1] = out / "pretrain" / "eval" / f"training_{it}" / "teacher_checkpoint.pth"
        results = evaluate(exports[it + 1], f"it{it + 1}", ["eval_linear", "eval_knn"], out, hc18, log)
        rows.append(validation_row(it + 1, results))
    chosen = max(rows, key=lambda r: (r["linear_val_weighted_f1"], -r["iteration"]))["iteration"]
    final = evaluate(exports[chosen], f"chosen_it{chosen}", list(EVALS), out, hc18, log, "report.baseline=random")
    figure = Path(args.results).with_suffix(".png")
    plot(rows, chosen, out / "pretrain" / "training_metrics.jsonl", figure)
    result = {"benchmark": "study_hc18", "stamp": stamp(), "arch": args.arch, "iterations": args.iterations,
              "batch_size": args.batch_size, "recipe": args.recipe, "preset": str(PRESET.relative_to(REPO)),
              "overrides": RECIPES[args.recipe] + args.set, "pretrain_wall_seconds": round(seconds, 1),
              "data": "HC18 (CC BY 4.0) hc-terciles + head masks; pretraining pool HC18 train+unlabelled and 57 "
                      "FETAL_PLANES_DB images (CC BY 4.0)",
              "choice": "the export with the best linear-probe weighted F1 on HC18 val (ties: the earlier)",
              "validation": rows, "chosen_iteration": chosen,
              "test_of_the_chosen": test_row(final), "test_n": final["eval_linear"]["n"]["test"]}
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"validation": rows, "chosen": chosen, "test": result["test_of_the_chosen"]}, indent=1))
    print(f"wrote {args.results} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
