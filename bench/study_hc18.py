"""The study in miniature on real fetal ultrasound (HC18 + FETAL_PLANES_DB images from ../shared/data).

Does the project's own chain, with its own commands:
1. curate: `tools/build_dataset.py --source hc18 --task hc-terciles` (head-size terciles from the train
   split, subjects never straddle splits) and `--source fpdb --task brain-planes` (the 57 local images);
2. pretrain: `tools/train.py` on HC18 train + unlabelled + the FPDB images (no HC18 val/test image is
   seen), exporting the teacher every `--eval-every` iterations;
3. evaluate every export and a random initialisation of the same architecture: linear probe and kNN
   on the head-size terciles (train -> best head on val -> test) and the dense linear probe on the
   HC18 head masks (Dice);
4. write `OUT/study_hc18.json` and `OUT/study_hc18.png` (metric vs pretraining iterations).

    python bench/study_hc18.py --iterations 1500 --eval-every 300 --output-dir runs/study_hc18

The budget is `--iterations` (deterministic; the wall time is reported). Re-running resumes the
pretraining and reuses finished evaluations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PY = sys.executable


def run(cmd: list[str], log: Path) -> None:
    """Run a project command, its output appended to `log`; raise with the log's tail on failure."""
    print("$", " ".join(cmd), flush=True)
    with log.open("a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
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


def pretrain(args, out: Path, hc18: Path, fpdb: Path, log: Path) -> float:
    """Run (or resume) the pretraining; returns its wall time in seconds."""
    start = time.perf_counter()
    run([PY, "tools/train.py", "--config-file", str(REPO / "configs/train/tiny_cpu.yaml"),
         "--output-dir", str(out / "pretrain"),
         f"train.dataset_path={hc18}:train,unlabelled;{fpdb}",
         f"student.arch={args.arch}", "student.patch_size=8", "crops.global_crops_size=64",
         "crops.local_crops_size=32", "crops.local_crops_number=4", f"train.batch_size_per_gpu={args.batch_size}",
         f"train.OFFICIAL_EPOCH_LENGTH={args.eval_every}", f"optim.epochs={args.iterations // args.eval_every}",
         f"evaluation.eval_period_iterations={args.eval_every}", f"checkpointing.period={args.eval_every}",
         "optim.warmup_epochs=1", "teacher.warmup_teacher_temp_epochs=1", "dino.head_n_prototypes=1024",
         "ibot.head_n_prototypes=1024", "train.log_period=20", "optim.lr=0.002", "optim.scaling_rule=none",
         "teacher.momentum_teacher=0.99", "teacher.final_momentum_teacher=1.0",
         f"train.num_workers={args.workers}"], log)
    return time.perf_counter() - start


def evaluate(weights: str, name: str, args, out: Path, hc18: Path, log: Path) -> dict:
    """Linear probe, kNN and dense probe of one initialisation; returns the headline metrics."""
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
    return {"linear_weighted_f1": results["eval_linear"]["weighted_f1"],
            "linear_balanced_accuracy": results["eval_linear"]["balanced_accuracy"],
            "linear_weighted_f1_ci": results["eval_linear"].get("weighted_f1_ci"),
            "knn_weighted_f1": results["eval_knn"]["weighted_f1"],
            "knn_balanced_accuracy": results["eval_knn"]["balanced_accuracy"],
            "dice": results["eval_segmentation"]["dice"], "iou": results["eval_segmentation"]["iou"]}


def plot(rows: list[dict], path: Path) -> None:
    """Each metric against pretraining iterations; random init drawn as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("linear_weighted_f1", "linear probe, weighted F1"), ("knn_weighted_f1", "kNN, weighted F1"),
            ("dice", "dense probe, Dice")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    trained = [r for r in rows if r["init"] == "pretrained"]
    random_row = next(r for r in rows if r["init"] == "random")
    for ax, (key, title) in zip(axes, keys):
        ax.plot([r["iteration"] for r in trained], [r[key] for r in trained], "o-", label="ours (HC18+FPDB)")
        ax.axhline(random_row[key], color="gray", ls="--", label="random init")
        ax.set_title(title)
        ax.set_xlabel("pretraining iterations")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    fig.suptitle("HC18 head-size terciles and head masks: frozen features vs pretraining")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    """Curate, pretrain, evaluate, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--arch", default="vit_tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--output-dir", default=str(REPO / "runs" / "study_hc18"))
    parser.add_argument("--results", default=str(REPO / "bench" / "results" / "study_hc18.json"))
    args = parser.parse_args()
    if not (SHARED / "hc18").is_dir():
        print(f"{SHARED / 'hc18'} is absent: this study needs the real HC18 data", file=sys.stderr)
        return 2
    if args.iterations % args.eval_every:
        parser.error("--iterations must be a multiple of --eval-every")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "study.log"
    hc18, fpdb = curate(out, log)
    seconds = pretrain(args, out, hc18, fpdb, log)
    rows = [{"init": "random", "iteration": 0, **evaluate("random", "random", args, out, hc18, log)}]
    for it in range(args.eval_every - 1, args.iterations, args.eval_every):
        weights = out / "pretrain" / "eval" / f"training_{it}" / "teacher_checkpoint.pth"
        rows.append({"init": "pretrained", "iteration": it + 1,
                     **evaluate(str(weights), f"it{it + 1}", args, out, hc18, log)})
    plot(rows, out / "study_hc18.png")
    result = {"benchmark": "study_hc18", "command": "python bench/study_hc18.py " + " ".join(sys.argv[1:]),
              "arch": args.arch, "iterations": args.iterations, "batch_size": args.batch_size,
              "pretrain_wall_seconds": round(seconds, 1), "cores": os.cpu_count(), "machine": platform.machine(),
              "data": "HC18 (CC BY 4.0) hc-terciles + head masks; pretraining pool HC18 train+unlabelled and 57 "
                      "FETAL_PLANES_DB images (CC BY 4.0)",
              "rows": rows}
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=1))
    print(f"wrote {args.results} and {out / 'study_hc18.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
