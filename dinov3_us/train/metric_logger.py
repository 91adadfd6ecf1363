"""Training telemetry on rank 0: `training_metrics.jsonl`, TensorBoard scalars and a progress line."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from dinov3_us.fileio import write_atomic
from dinov3_us.run_dir import RunDir

logger = logging.getLogger("dinov3_us")

_CONSOLE_KEYS = ("total_loss", "dino_local_crops_loss", "dino_global_crops_loss", "ibot_loss", "koleo_loss",
                 "gram_loss", "lr")


MONITOR_PROBES = {"kNN": "monitor_knn", "linear": "monitor_linear"}  # display name -> metric (eval.downstream)


def monitor_parts(metrics: dict) -> list[str]:
    """`kNN 0.61 (random 0.44)` for each downstream-monitor score in `metrics`."""
    return [f"{name} {metrics[key]:.3f} (random {metrics[key + '_random']:.3f})"
            for name, key in MONITOR_PROBES.items() if key in metrics and key + "_random" in metrics]


def format_eta(seconds: float) -> str:
    """`HH:MM:SS` below a day, else hours (`31 h`)."""
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 3600:.0f} h"


def truncate_jsonl(path: Path, first_iteration: int) -> int:
    """Drop lines logged at `iteration >= first_iteration` (they are redone after a resume); returns lines kept."""
    if not path.exists():
        return 0
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["iteration"] < first_iteration]
    write_atomic(path, "".join(line + "\n" for line in kept))
    return len(kept)


class MetricLogger:
    """Writes one JSON line and TensorBoard scalars per logged iteration, and a console line with rate and ETA.

    The ETA uses the pace of the last `eta_window` logging intervals, so a slow start (compilation,
    page cache, a neighbour's job) stops counting once it is over.
    """

    def __init__(self, output_dir: str | Path, total_iterations: int, start_iteration: int, enabled: bool = True,
                 tensorboard: bool = True, eta_window: int = 5, clock: Callable[[], float] = time.perf_counter):
        self.enabled = enabled
        self.total, self.start = total_iterations, start_iteration
        self.jsonl = RunDir(output_dir).metrics
        self.writer = None
        self.clock = clock
        self.marks = deque([(clock(), start_iteration - 1)], maxlen=eta_window + 1)  # (time, last iteration done)
        if not enabled:
            return
        truncate_jsonl(self.jsonl, start_iteration)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(RunDir(output_dir).tensorboard), purge_step=start_iteration)

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        """Record `metrics` of `iteration` (rank 0 only; other ranks are no-ops)."""
        if not self.enabled:
            return
        self.marks.append((self.clock(), iteration))
        (t_old, it_old), (t_now, _) = self.marks[0], self.marks[-1]
        eta = (t_now - t_old) / max(iteration - it_old, 1) * (self.total - iteration - 1)
        record = {"iteration": iteration, **{k: float(v) for k, v in metrics.items()}, "eta_seconds": round(eta, 1)}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, float(value), iteration)
        parts = [f"{k} {metrics[k]:.4g}" for k in _CONSOLE_KEYS if k in metrics] + monitor_parts(metrics)
        rate = metrics.get("images_per_second", 0.0)
        logger.info("it %d/%d  %s  %.1f img/s  ETA %s", iteration + 1, self.total, "  ".join(parts), rate,
                    format_eta(eta))

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def progress_line(run_dir: str | Path) -> str | None:
    """Where a pretraining run stands, from its last `training_metrics.jsonl` line, or None before the first.

    `it 340/1000 (34%), 85.2 img/s, ETA 00:02:10, DINO loss 0.987 ln K, kNN 0.612 (random 0.440)` (the
    downstream monitor's last scores), plus a warning when the self-distillation alarm
    (`SelfDistillationWatch`) is on at that iteration.
    """
    run = RunDir(run_dir)
    path = run.metrics
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    last = records[-1] if records else None
    if last is None:
        return None
    total = None
    try:
        import yaml

        cfg = yaml.safe_load(run.config.read_text())
        total = int(cfg["optim"]["epochs"]) * int(cfg["train"]["OFFICIAL_EPOCH_LENGTH"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    done = int(last["iteration"]) + 1
    parts = [f"it {done}/{total} ({100 * done / total:.0f}%)" if total else f"it {done}"]
    if "images_per_second" in last:
        parts.append(f"{last['images_per_second']:.1f} img/s")
    if "eta_seconds" in last and done != total:
        parts.append("ETA " + format_eta(float(last["eta_seconds"])))
    if "dino_loss_ratio" in last:
        parts.append(f"DINO loss {last['dino_loss_ratio']:.3f} ln K")
    monitored = next((r for r in reversed(records) if any(k in r for k in MONITOR_PROBES.values())), None)
    if monitored is not None:
        parts += monitor_parts(monitored)
    line = ", ".join(parts)
    if last.get("selfdistill_stalled"):
        line += ("\n  WARNING: self-distillation has not started (DINO loss still at ln K, uniform targets); "
                 f"see {run.log}")
    return line
