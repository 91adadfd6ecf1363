"""When does self-distillation start? Short pretrainings over the knobs that decide it.

Each variant is a handful of config overrides on top of a base recipe; each runs `tools/train.py` for
`--iterations` on real HC18 (train + unlabelled) and on the synthetic phantom, and is judged only by
its self-distillation statistics, never by a test metric:

- `dino_loss_ratio`: the DINO loss (mean of its global and local terms) / ln K. 1 = the student predicts a
  uniform distribution, which is all it can do while the targets carry no information.
- `target_entropy`: entropy of the centred targets / ln K. 1 = uniform targets.
- `teacher_logit_std`: std over the batch of the teacher's logits / T, mean over prototypes. How far
  apart the teacher puts two images before centring: far below 1, Sinkhorn-Knopp (or the centre)
  cannot tell the images apart and the targets stay uniform.

For each variant the table gives the first logged iteration after the lr warm-up at which the target
entropy falls below 0.97 and 0.9 (the targets carry information about the image) and the ratio below
0.97 (the alarm's threshold) and 0.9 (the student follows them), "never" within the budget, and the
values at the end (mean of the last five logs); the figure shows the curves. JSON in
bench/results/selfdistill_onset.json, figure beside it.

    python bench/bench_selfdistill_onset.py                               # the variants, HC18 + phantom
    python bench/bench_selfdistill_onset.py --datasets hc18 --only official cosine_t0.01
    python bench/bench_selfdistill_onset.py --presets                     # configs/train/*.yaml, scaled down

`--presets` runs every preset of configs/train/ with its own recipe knobs (prototype normalisation,
temperatures, LayerScale, lr, centring, schedule shape) at a size that fits here: the backbone, crops
and batch of the base (ViT 64-dim x 2 blocks, 32 / 16 px, batch 16), K at most 4,096, and a budget of
`--iterations`, the preset's epochs mapped onto it. Presets that start from pretrained weights are
skipped (none can be downloaded here); presets that are the same run at this size are run once.
Re-running reuses finished runs (delete `--output-dir` to redo them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from stamp import stamp
from study_hc18 import run

from dinov3_us.configs import load_config
from dinov3_us.train.monitor import dino_loss_ratio

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared" / "data"
PY = sys.executable
ONSET = 0.9  # "left ln K": ratio and target entropy below this
STARTED = 0.97  # the alarm's threshold (train.selfdistill_alarm_iterations): the DINO loss has started to fall

# The base: the official recipe's self-distillation choices at the size of configs/train/tiny_cpu.yaml
# (ViT 64-dim, 2 blocks, 32 / 16 px crops): the official head geometry (bottleneck 256, which sets the
# scale of the plain prototype layer's logits), K = 4,096 (65,536 / 16), plain prototypes frozen for
# the first epoch, teacher temperature 0.04 -> 0.07 over the first 30% of training, LayerScale 1e-5,
# Sinkhorn-Knopp, teacher momentum 0.992 -> 1.
BASE = ["dino.head_hidden_dim=512", "ibot.head_hidden_dim=512", "dino.head_bottleneck_dim=256",
        "ibot.head_bottleneck_dim=256", "dino.head_n_prototypes=4096", "ibot.head_n_prototypes=4096",
        "train.batch_size_per_gpu=16", "optim.lr=0.002", "optim.scaling_rule=none",
        "optim.freeze_last_layer_epochs=1", "teacher.warmup_teacher_temp=0.04", "teacher.teacher_temp=0.07",
        "teacher.momentum_teacher=0.992", "teacher.final_momentum_teacher=1.0", "student.layerscale=1.0e-05",
        "train.centering=sinkhorn_knopp"]
COSINE = ["dino.head_norm_last_layer=true", "ibot.head_norm_last_layer=true"]


def _temp(t: float) -> list[str]:
    return [f"teacher.warmup_teacher_temp={t}", f"teacher.teacher_temp={t}"]


def _k(k: int) -> list[str]:
    return [f"dino.head_n_prototypes={k}", f"ibot.head_n_prototypes={k}"]


SMALL_DATA = ["student.layerscale=0.1", *COSINE, *_temp(0.01), *_k(256), "optim.freeze_last_layer_epochs=0"]
AUTO = ["teacher.temp_control=auto"]

# name -> (what changes from the base, overrides). Two groups: the official choices with one knob changed
# (which single change is enough?), and the small-data recipe with one knob put back to the official
# value (which knobs are decisive?).
VARIANTS = {
    "official": ("the official choices (base)", []),
    "t0.01": ("teacher temperature 0.01", _temp(0.01)),
    "cosine": ("unit-norm (cosine) prototypes", COSINE),
    "cosine_t0.01": ("cosine prototypes and teacher temperature 0.01", COSINE + _temp(0.01)),
    "ls0.1": ("LayerScale init 0.1", ["student.layerscale=0.1"]),
    "K256": ("K = 256", _k(256)),
    "batch8": ("batch 8", ["train.batch_size_per_gpu=8"]),
    "lr1e-2": ("lr 1e-2", ["optim.lr=0.01"]),
    "softmax": ("centring: softmax with an EMA centre", ["train.centering=softmax"]),
    "no_freeze": ("prototypes not frozen in epoch 1", ["optim.freeze_last_layer_epochs=0"]),
    "small-data": ("LayerScale 0.1, cosine prototypes, temperature 0.01, K = 256, no freeze", SMALL_DATA),
    "sd-official_temp": ("small-data, teacher temperature 0.04 -> 0.07",
                         SMALL_DATA + ["teacher.warmup_teacher_temp=0.04", "teacher.teacher_temp=0.07"]),
    "sd-plain": ("small-data, plain prototypes", SMALL_DATA + ["dino.head_norm_last_layer=false",
                                                               "ibot.head_norm_last_layer=false"]),
    "sd-ls1e-5": ("small-data, LayerScale 1e-5", SMALL_DATA + ["student.layerscale=1.0e-05"]),
    "sd-K4096": ("small-data, K = 4,096", SMALL_DATA + _k(4096)),
    "sd-softmax": ("small-data, softmax centring", SMALL_DATA + ["train.centering=softmax"]),
    "sd-lr5e-4": ("small-data, lr 5e-4", SMALL_DATA + ["optim.lr=0.0005"]),
    "official-auto": ("the official choices, teacher.temp_control=auto", AUTO),
    "small-data-auto": ("small-data, teacher.temp_control=auto (capped at 0.01)", SMALL_DATA + AUTO),
}
# the phantom (synthetic) pool: the two ends and the decisive knobs only
PHANTOM_VARIANTS = ["official", "t0.01", "small-data", "sd-official_temp", "official-auto"]

# --presets: a size that fits here, whatever the preset says: `test` (tiny_cpu's backbone and crops, the default)
# or `tiny` (small_cpu's: ViT-Ti/8 on 64 / 32 px crops, the smallest model whose DINO loss leaves ln K here)
SCALE_DOWN_COMMON = ["student.patch_size=8", "student.n_storage_tokens=2", "train.batch_size_per_gpu=16",
                     "compute_precision.param_dtype=fp32", "dino.head_hidden_dim=512", "ibot.head_hidden_dim=512",
                     "train.compile=false", "train.checkpointing=false"]
SCALE_DOWN = {
    "test": ["student.arch=vit_test", "crops.global_crops_size=32", "crops.local_crops_size=16",
             "crops.local_crops_number=2", *SCALE_DOWN_COMMON],
    "tiny": ["student.arch=vit_tiny", "crops.global_crops_size=64", "crops.local_crops_size=32",
             "crops.local_crops_number=4", *SCALE_DOWN_COMMON],
}


def curate(name: str, out: Path) -> str:
    """The dataset's shards (curated once under OUT/data/) -> a `train.dataset_path`."""
    folder = out / "data" / name
    if not (folder / "manifest.json").exists():
        if name == "hc18":
            cmd = ["--source", "hc18", "--task", "hc-terciles", "--root", str(SHARED / "hc18"), "--workers", "2"]
        else:
            cmd = ["--source", "phantom", "--num-samples", "600"]
        folder.parent.mkdir(parents=True, exist_ok=True)
        run([PY, "tools/build_dataset.py", *cmd, "--out", str(folder), "--no-progress"], out / "curate.log", 2)
    return f"{folder}:train,unlabelled"  # the phantom's coarse planes are unlabelled, as HC18's test set


def schedule(iterations: int, epoch_length: int) -> list[str]:
    """The budget as epochs of `epoch_length`, lr warm-up 1 epoch, teacher-temperature warm-up 30%."""
    epochs = iterations // epoch_length
    return [f"train.OFFICIAL_EPOCH_LENGTH={epoch_length}", f"optim.epochs={epochs}", "optim.warmup_epochs=1",
            f"teacher.warmup_teacher_temp_epochs={max(1, round(0.3 * epochs))}"]


def preset_schedule(preset: dict, iterations: int, epoch_length: int) -> list[str]:
    """The preset's epochs mapped onto the budget: warm-ups keep their share of the run."""
    epochs = iterations // epoch_length
    scale = epochs / preset.get("optim", {}).get("epochs", 100)

    def share(section: str, key: str, default: int) -> str:
        value = preset.get(section, {}).get(key, default)
        return f"{section}.{key}={max(1 if value else 0, round(value * scale))}"

    return [f"train.OFFICIAL_EPOCH_LENGTH={epoch_length}", f"optim.epochs={epochs}",
            share("optim", "warmup_epochs", 10), share("optim", "freeze_last_layer_epochs", 1),
            share("teacher", "warmup_teacher_temp_epochs", 30)]


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(log: list[dict], k: int, start: int) -> dict:
    """First logged iteration at or after `start` (the end of the lr warm-up, as for the alarm) below each
    threshold (None: never within the budget), and the values at the end (mean of the last five logs).

    Before the warm-up ends a fresh teacher can look anything but uniform (softmax centring with an
    untrained centre at a low temperature gives one-hot targets at iteration 0): that is not a start.
    """
    ratio = [(r["iteration"], dino_loss_ratio(r, k)) for r in log if r["iteration"] >= start]
    entropy = [(r["iteration"], r["target_entropy"]) for r in log if r["iteration"] >= start]

    def onset(series, threshold):
        return next((it + 1 for it, v in series if v < threshold), None)

    tail = log[-5:]
    return {"entropy_started": onset(entropy, STARTED), "entropy_onset": onset(entropy, ONSET),
            "loss_started": onset(ratio, STARTED), "loss_onset": onset(ratio, ONSET),
            "final_dino_loss_ratio": sum(dino_loss_ratio(r, k) for r in tail) / len(tail),
            "final_target_entropy": sum(r["target_entropy"] for r in tail) / len(tail),
            "min_target_entropy": min(v for _, v in entropy) if entropy else None,
            "final_teacher_logit_std": sum(r.get("teacher_logit_std", float("nan")) for r in tail) / len(tail),
            "final_teacher_temp": tail[-1].get("teacher_temp"),
            # the downstream monitor on the labelled val split (validation only: what picks a recipe)
            "monitor": [{"iteration": r["iteration"]} | {k[len("monitor_"):]: round(r[k], 4) for k in r
                                                          if k.startswith("monitor_") and k != "monitor_seconds"}
                        for r in log if "monitor_knn" in r],
            "curve": [{"iteration": r["iteration"], "dino_loss_ratio": round(dino_loss_ratio(r, k), 4),
                       "target_entropy": round(r["target_entropy"], 4),
                       "teacher_logit_std": round(r.get("teacher_logit_std", float("nan")), 4)} for r in log]}


def train(job: dict, args, out: Path) -> dict:
    """One short pretraining (reused when its log is complete); returns its summary row."""
    run_dir = out / "runs" / job["dataset"] / job["name"]
    metrics = run_dir / "training_metrics.jsonl"
    log = read_log(metrics) if metrics.exists() else []
    if not log or log[-1]["iteration"] < args.iterations - 1:
        start = time.perf_counter()
        run_dir.mkdir(parents=True, exist_ok=True)
        run([PY, "tools/train.py", "--config-file", job["config"], "--output-dir", str(run_dir),
             f"train.dataset_path={job['data']}", *job["overrides"], "train.log_period=10", "train.num_workers=0",
             "checkpointing.period=100000", "evaluation.eval_period_iterations=0", "runtime.device=cpu",
             f"monitor.period_iterations={args.epoch_length}", f"train.seed={args.seed}"], run_dir / "bench.log",
            args.threads)
        (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
        print(f"  done {job['dataset']}/{job['name']} in {time.perf_counter() - start:.0f} s", flush=True)
        log = read_log(metrics)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    k = cfg["dino"]["head_n_prototypes"]
    wall = run_dir / "wall_seconds.txt"
    return {"dataset": job["dataset"], "variant": job["name"], "what": job["what"], "K": k,
            "teacher_temp": cfg["teacher"]["teacher_temp"], "cosine_prototypes": cfg["dino"]["head_norm_last_layer"],
            "overrides": job["overrides"], "wall_seconds": float(wall.read_text()) if wall.exists() else None,
            **summarise(log, k, cfg["optim"]["warmup_epochs"] * cfg["train"]["OFFICIAL_EPOCH_LENGTH"])}


def jobs_for(args, out: Path) -> list[dict]:
    jobs = []
    for dataset in args.datasets:
        data = curate(dataset, out)
        if args.presets:
            seen: dict[str, str] = {}
            for path in sorted((REPO / "configs" / "train").glob("*.yaml")):
                if args.preset_names and path.stem not in args.preset_names:
                    continue
                preset = yaml.safe_load(path.read_text())
                if preset.get("student", {}).get("pretrained_weights"):
                    print(f"skipped {path.name}: it starts from student.pretrained_weights, which cannot be "
                          "downloaded here")
                    continue
                k = min(preset.get("dino", {}).get("head_n_prototypes", 65536), 4096)  # 65,536 / 16 at most
                overrides = [*SCALE_DOWN[args.size], *_k(k),
                             *preset_schedule(preset, args.iterations, args.epoch_length), *(AUTO if args.auto else [])]
                key = json.dumps(load_config(str(path), overrides).to_dict(), sort_keys=True, default=str)
                if key in seen:
                    print(f"{path.name} scaled down is the same run as {seen[key]}")
                    continue
                seen[key] = path.name
                name = path.stem + ("-auto" if args.auto else "")
                what = f"configs/train/{path.name}, scaled down" + (", teacher.temp_control=auto" if args.auto else "")
                jobs.append({"dataset": dataset, "name": name, "what": what, "config": str(path), "data": data,
                             "overrides": overrides})
            continue
        for name in args.only or (list(VARIANTS) if dataset == "hc18" else PHANTOM_VARIANTS):
            what, extra = VARIANTS[name]
            jobs.append({"dataset": dataset, "name": name, "what": what,
                         "config": str(REPO / "configs" / "train" / "tiny_cpu.yaml"), "data": data,
                         "overrides": [*BASE, *schedule(args.iterations, args.epoch_length), *extra]})
    return jobs


def _fmt(onset) -> str:
    return "never" if onset is None else str(onset)


def table(rows: list[dict]) -> str:
    lines = ["| data | variant | target entropy < 0.97 / < 0.9 at | DINO loss < 0.97 / < 0.9 ln K at | at the end: "
             "DINO loss / ln K, target entropy (lowest), teacher logit std / T |", "|---|---|---|---|---|"]
    for r in rows:
        lowest = f" ({r['min_target_entropy']:.3f})" if r["min_target_entropy"] is not None else ""
        lines.append(f"| {r['dataset']} | {r['variant']}: {r['what']} | {_fmt(r['entropy_started'])} / "
                     f"{_fmt(r['entropy_onset'])} | {_fmt(r['loss_started'])} / {_fmt(r['loss_onset'])} | "
                     f"{r['final_dino_loss_ratio']:.3f}, {r['final_target_entropy']:.3f}{lowest}, "
                     f"{r['final_teacher_logit_std']:.3g} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Per dataset: DINO loss / ln K and target entropy against iterations, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(len(datasets), 3, figsize=(18, 4.2 * len(datasets)), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for row_axes, dataset in zip(axes, datasets):
        subset = [r for r in rows if r["dataset"] == dataset]
        for i, r in enumerate(subset):
            its = [c["iteration"] for c in r["curve"]]
            style = {"color": cmap(i % 20), "lw": 2.2 if r["variant"] in ("official", "small-data") else 1.1}
            row_axes[0].plot(its, [c["dino_loss_ratio"] for c in r["curve"]], label=r["variant"], **style)
            row_axes[1].plot(its, [c["target_entropy"] for c in r["curve"]], **style)
            row_axes[2].plot(its, [max(c["teacher_logit_std"], 1e-4) for c in r["curve"]], **style)
        for ax, what in zip(row_axes, ("DINO loss / ln K", "target entropy / ln K",
                                       "teacher logit std over the batch / T")):
            ax.set_title(f"{dataset}: {what}")
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
        row_axes[0].axhline(STARTED, color="gray", ls="--", lw=1)
        for ax in row_axes[:2]:
            ax.axhline(ONSET, color="gray", ls=":", lw=1)
            ax.set_ylim(0.0, 1.08)
        row_axes[2].set_yscale("log")
        row_axes[0].legend(fontsize=7, ncol=2, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    """Run the variants (or the presets), print the table, write JSON and figure."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=("hc18", "phantom"),
                   help="default: hc18 and phantom (with --presets: hc18)")
    p.add_argument("--only", nargs="+", choices=list(VARIANTS),
                   help="run these variants only (default: all on HC18, a subset on the phantom)")
    p.add_argument("--presets", action="store_true", help="run configs/train/*.yaml scaled down instead")
    p.add_argument("--preset-names", nargs="+", metavar="NAME", help="with --presets: only these (file stems)")
    p.add_argument("--size", choices=sorted(SCALE_DOWN), default="test",
                   help="with --presets: the size they are scaled down to (default test: ViT 64-dim x 2 blocks)")
    p.add_argument("--auto", action="store_true", help="with --presets: teacher.temp_control=auto in each")
    p.add_argument("--iterations", type=int, default=1000, help="budget of each run (default 1000)")
    p.add_argument("--epoch-length", type=int, default=100, help="train.OFFICIAL_EPOCH_LENGTH (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per run (default 1)")
    p.add_argument("--output-dir", help="default: runs/selfdistill_onset[_presets]")
    p.add_argument("--results", help="default: bench/results/selfdistill_onset[_presets].json (figure beside it)")
    args = p.parse_args()
    args.datasets = args.datasets or (["hc18"] if args.presets else ["hc18", "phantom"])
    if args.iterations % args.epoch_length:
        p.error("--iterations must be a multiple of --epoch-length")
    if "hc18" in args.datasets and not (SHARED / "hc18").is_dir():
        print(f"{SHARED / 'hc18'} is absent: use --datasets phantom", file=sys.stderr)
        return 2
    stem = "selfdistill_onset" + ("_presets" if args.presets else "") + ("_auto" if args.auto else "") + \
        (f"_{args.size}" if args.presets and args.size != "test" else "")
    out = Path(args.output_dir or REPO / "runs" / stem)
    results = Path(args.results or REPO / "bench" / "results" / f"{stem}.json")
    out.mkdir(parents=True, exist_ok=True)
    jobs = jobs_for(args, out)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda job: train(job, args, out), jobs))
    print(table(rows))
    tiny = args.presets and args.size == "tiny"
    size = "ViT-Ti/8, 64/32 px crops" if tiny else "ViT 64-dim x 2 blocks, 32/16 px crops"
    plot(rows, results.with_suffix(".png"), f"When self-distillation starts ({args.iterations} iterations, {size})")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({
        "benchmark": stem, "stamp": stamp(),
        "command": "python bench/bench_selfdistill_onset.py " + " ".join(sys.argv[1:]),
        "iterations": args.iterations, "epoch_length": args.epoch_length, "seed": args.seed, "onset_threshold": ONSET,
        "started_threshold": STARTED,
        "base_overrides": None if args.presets else BASE, "scale_down": SCALE_DOWN[args.size] if args.presets else None,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "run_seconds_total": round(sum(r["wall_seconds"] or 0.0 for r in rows), 1), "rows": rows}, indent=1) + "\n")
    print(f"wrote {results} and {results.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
