"""What the downstream monitor costs: a small-data pretraining with the monitor on, its time against the run's.

    python bench/bench_monitor.py                       # HC18 (../shared/data/hc18) as `make demo-real` runs it
    python bench/bench_monitor.py --iterations 600 --period 50 --data DIR

Pretrains `configs/train/small_cpu.yaml` in 2 processes (torchrun, gloo; global batch 16, as `make demo-real`)
on HC18 labelled by head-circumference tercile (`--task hc-terciles`; without ../shared, the phantom), with
`monitor.period_iterations` from the preset unless `--period` is given, and reads back what the trainer
measured: every monitor call's seconds (`monitor_seconds` in training_metrics.jsonl), the random-init
baseline, and the monitor's share of the run's wall time (its last log line). Writes
`bench/results/monitor_overhead.json` with `stamp()`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from stamp import REPO, stamp


def build_data(out: Path) -> tuple[Path, str]:
    """(shards folder, what it is): HC18 in head-circumference terciles where ../shared has it, else the phantom."""
    hc18 = REPO.parent / "shared" / "data" / "hc18"
    if hc18.is_dir():
        args, what = ["--source", "hc18", "--task", "hc-terciles", "--root", str(hc18), "--workers", "2"], "HC18"
    else:
        args, what = ["--source", "phantom", "--num-samples", "600", "--image-size", "128"], "phantom (no HC18 here)"
    subprocess.run([sys.executable, str(REPO / "tools/build_dataset.py"), *args, "--out", str(out), "--no-progress"],
                   check=True, capture_output=True, text=True)
    return out, what


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="a curated shards folder with a labelled val split (default: HC18)")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--period", type=int, help="monitor.period_iterations (default: the preset's)")
    p.add_argument("--config", default=str(REPO / "configs/train/small_cpu.yaml"))
    p.add_argument("--output", type=Path, default=REPO / "bench/results/monitor_overhead.json")
    args = p.parse_args(argv)
    preset = yaml.safe_load(Path(args.config).read_text())
    period = args.period or preset.get("monitor", {}).get("period_iterations")
    with tempfile.TemporaryDirectory() as tmp:
        data, what = (args.data, str(args.data)) if args.data else build_data(Path(tmp) / "data")
        out = Path(tmp) / "run"
        splits = "train,unlabelled" if (data / "manifest.json").is_file() and "unlabelled" in \
            json.loads((data / "manifest.json").read_text()).get("shards", {}) else "train"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools/train.py"), "--config-file", args.config, "--output-dir", str(out),
               f"train.dataset_path={data}:{splits}", "train.batch_size_per_gpu=8", "train.OFFICIAL_EPOCH_LENGTH=100",
               f"optim.epochs={args.iterations // 100}", "checkpointing.period=100",
               "evaluation.eval_period_iterations=0", *([f"monitor.period_iterations={period}"] if period else [])]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            return 1
        records = [json.loads(x) for x in (out / "training_metrics.jsonl").read_text().splitlines()]
        log = (out / "log.txt").read_text()
    calls = [r for r in records if "monitor_seconds" in r]
    summary = re.search(r"downstream monitor: ([\d.]+) s in all, ([\d.]+)% of this run's (\d+) s", log)
    baseline = re.search(r"monitor: random init of the same architecture: .*\(([\d.]+) s\)", log)
    result = {
        "stamp": stamp(), "data": what, "config": args.config, "iterations": args.iterations, "period": period,
        "processes": 2, "global_batch": 16,
        "calls": len(calls), "seconds_per_call": [round(r["monitor_seconds"], 3) for r in calls],
        "random_init_baseline_s": float(baseline.group(1)) if baseline else None,
        "monitor_s": float(summary.group(1)), "run_wall_s": float(summary.group(3)),
        "monitor_share_of_run": float(summary.group(2)) / 100, "process_wall_s": round(wall, 1),
        "scores": [{"iteration": r["iteration"], "knn": r.get("monitor_knn"), "knn_random": r.get("monitor_knn_random"),
                    "linear": r.get("monitor_linear"), "linear_random": r.get("monitor_linear_random")} for r in calls],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"monitor: {result['calls']} calls, {result['monitor_s']:.1f} s of a {result['run_wall_s']:.0f} s run "
          f"({100 * result['monitor_share_of_run']:.1f}%), period {period}; -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
