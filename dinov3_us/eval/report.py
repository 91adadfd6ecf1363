"""Evaluation outputs: `results.json`, confusion-matrix PNGs, a markdown summary, and run comparisons.

results.json (one evaluation run):
    task            linear | knn | finetune | segmentation
    created, dinov3_us_version, world_size
    weights         {path, sha256, kind (random | official | exported), arch, ...}
    datasets        {train, val, test: {name: spec}}
    classes         class names (classification tasks)
    n               {train: N, val: N, <test name>: N, ...}
    class_counts    {split: [count per class]} (classification tasks)
    metrics         metrics on the first test set (classification: accuracy, balanced_accuracy,
                    weighted_f1, macro_f1, per_class, confusion_matrix, weighted_f1_ci,
                    balanced_accuracy_ci; segmentation: dice, iou, pixel_accuracy, dice_ci, iou_ci)
    test_metrics    {test name: metrics} for every test set (the first equals `metrics`)
    val_metrics     metrics of the selected model on val
    best_head (linear), best_k / per_k (knn), best_epoch (finetune), best_lr (segmentation)
    label_efficiency (linear, optional), timing, config (the resolved EvalConfig)

The task's per-sample rows (`results["predictions"]`) go to `predictions.csv`, not results.json
(`dinov3_us.eval.predictions`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dinov3_us.eval.predictions import write_predictions
from dinov3_us.fileio import write_json_atomic

logger = logging.getLogger("dinov3_us")

HEADLINE = {  # task kind -> (metric, its CI key, label)
    "classification": ("weighted_f1", "weighted_f1_ci", "weighted F1"),
    "segmentation": ("dice", "dice_ci", "Dice"),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe_name(name: str) -> str:
    """A file-name-safe version of a dataset name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "test"


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write `data` as indented JSON atomically."""
    return write_json_atomic(path, data, default=_json_default)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | os.PathLike,
                          title: str = "") -> Path:
    """Row-normalised confusion matrix (colour = recall share), with the counts written in each cell."""
    plt = _plt()
    cm = np.asarray(matrix, dtype=np.float64)
    share = np.divide(cm, cm.sum(1, keepdims=True), out=np.zeros_like(cm), where=cm.sum(1, keepdims=True) > 0)
    size = max(3.5, 0.9 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels=list(labels), rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _fmt(value, ci=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.4f}"
    return f"{text} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else text


def _metrics_md(metrics: dict) -> list[str]:
    lines = []
    if "dice" in metrics:
        lines += ["| metric | value (95% CI) |", "|---|---|"]
        lines += [f"| Dice | {_fmt(metrics['dice'], metrics.get('dice_ci'))} |",
                  f"| IoU | {_fmt(metrics['iou'], metrics.get('iou_ci'))} |",
                  f"| pixel accuracy | {_fmt(metrics.get('pixel_accuracy'))} |"]
        return lines
    level = metrics.get("ci_level", 0.95)
    lines += [f"| metric | value ({level:.0%} CI) |", "|---|---|",
              f"| accuracy | {_fmt(metrics['accuracy'])} |",
              f"| balanced accuracy | {_fmt(metrics['balanced_accuracy'], metrics.get('balanced_accuracy_ci'))} |",
              f"| weighted F1 | {_fmt(metrics['weighted_f1'], metrics.get('weighted_f1_ci'))} |",
              f"| macro F1 | {_fmt(metrics['macro_f1'])} |", "",
              "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, m in metrics["per_class"].items():
        lines.append(f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    cm = metrics["confusion_matrix"]
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| true \\ pred | " + " | ".join(cm["labels"]) + " |", "|---" * (len(cm["labels"]) + 1) + "|"]
    lines += [f"| {lab} | " + " | ".join(str(v) for v in row) + " |" for lab, row in zip(cm["labels"], cm["matrix"])]
    return lines


def chance_text(chance: dict | None, digits: int) -> str:
    """`uniform guess / majority class` of a `vs_random["chance"]`, or "-" (segmentation has none)."""
    return f"{chance['uniform_guess']:.{digits}f} / {chance['majority_class']:.{digits}f}" if chance else "-"


def summary_markdown(results: dict) -> str:
    """A human-readable report of one run."""
    w = results.get("weights", {})
    lines = [f"# {results['task']} evaluation", "",
             f"- weights: `{w.get('path')}` ({w.get('kind')}), sha256 `{w.get('sha256', '')[:16]}`",
             "- samples: " + ", ".join(f"{k} {v}" for k, v in results.get("n", {}).items())]
    lines += [f"- **WARNING**: {warning}" for warning in results.get("warnings", [])]
    if "best_head" in results:
        b = results["best_head"]
        lines.append(f"- best head (on val {b.get('select_metric')} = {b.get('val_score', float('nan')):.4f}): "
                     f"`{b['name']}` (epoch {b.get('epoch')})")
    for key, label in (("best_k", "best k"), ("best_epoch", "best epoch"), ("best_lr", "best lr")):
        if key in results:
            lines.append(f"- {label}: {results[key]}")
    if "timing" in results:
        lines.append("- time: " + ", ".join(f"{k} {v:.1f} s" for k, v in results["timing"].items()))
    if results.get("vs_random"):
        v = results["vs_random"]
        lines += ["", f"## Against a random initialisation of the same architecture ({v['test_set']})", "",
                  f"| {v['metric']} | this backbone | random init | difference [95% CI] | P(not better) | "
                  "chance: uniform guess / majority class |", "|---|---|---|---|---|---|",
                  f"| test | {v['b']:.4f} | {v['a']:.4f} | {v['difference']:+.4f} [{v['ci'][0]:+.4f}, "
                  f"{v['ci'][1]:+.4f}] | {v['p_not_better']:.3f} | {chance_text(v.get('chance'), 4)} |",
                  "", f"Paired bootstrap of the difference on the same {v['n_samples']} test samples, "
                  f"{v['n_groups']} patients resampled ({v['replicates']} replicates); the random initialisation's "
                  "own report is in baseline_random/."]
    for name, metrics in results.get("test_metrics", {"test": results.get("metrics", {})}).items():
        lines += ["", f"## {name} (n = {results.get('n', {}).get(name, '?')})", ""] + _metrics_md(metrics)
    if "per_k" in results:
        lines += ["", "## kNN per k (test)", "", "| k | accuracy | weighted F1 | balanced accuracy |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {m['accuracy']:.4f} | {m['weighted_f1']:.4f} | {m['balanced_accuracy']:.4f} |"
                  for k, m in results["per_k"].items()]
    if results.get("label_efficiency"):
        lines += ["", "## Label efficiency (test weighted F1, mean +- std over seeds)", "",
                  "| fraction of train labels | n train (mean) | weighted F1 | balanced accuracy |",
                  "|---|---|---|---|"]
        for row in results["label_efficiency"]["curve"]:
            lines.append(f"| {row['fraction']:g} | {row['n_train']:.0f} | {row['weighted_f1']:.4f} +- "
                         f"{row['weighted_f1_std']:.4f} | {row['balanced_accuracy']:.4f} +- "
                         f"{row['balanced_accuracy_std']:.4f} |")
    return "\n".join(lines) + "\n"


def plot_label_efficiency(curve: list[dict], path: str | os.PathLike) -> Path:
    """Test weighted F1 (mean +- std over seeds) against the fraction of train labels (log x)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = [r["fraction"] * 100 for r in curve]
    ax.errorbar(x, [r["weighted_f1"] for r in curve], yerr=[r["weighted_f1_std"] for r in curve], marker="o",
                capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("% of train labels (patient-level)")
    ax.set_ylabel("test weighted F1")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_report(results: dict, out_dir: str | os.PathLike) -> list[Path]:
    """results.json, summary.md and the figures of one run; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = results.get("predictions")
    results = {k: v for k, v in results.items() if k != "predictions"}
    written = [write_json(out / "results.json", results)]
    if rows is not None:
        written.append(write_predictions(rows, out / "predictions.csv"))
    (out / "summary.md").write_text(summary_markdown(results), encoding="utf-8")
    written.append(out / "summary.md")
    tests = results.get("test_metrics", {})
    for i, (name, metrics) in enumerate(tests.items()):
        if "confusion_matrix" not in metrics:
            continue
        cm = metrics["confusion_matrix"]
        path = out / ("confusion_matrix.png" if i == 0 else f"confusion_matrix_{safe_name(name)}.png")
        title = f"{results['task']} on {name}: weighted F1 {metrics['weighted_f1']:.3f}"
        written.append(plot_confusion_matrix(cm["matrix"], cm["labels"], path, title))
    if results.get("label_efficiency"):
        written.append(plot_label_efficiency(results["label_efficiency"]["curve"], out / "label_efficiency.png"))
    logger.info("wrote %s", ", ".join(p.name for p in written))
    return written


# ---------------------------------------------------------------------------------------------- compare


def load_results(path: str | os.PathLike) -> dict:
    """A results.json (or the folder holding one)."""
    from dinov3_us.errors import DataError

    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable results.json ({e})") from None
    if not isinstance(data, dict) or "metrics" not in data or "task" not in data:
        raise DataError(f"{path}: expected a results.json with 'task' and 'metrics'")
    data["_path"] = str(path)
    return data


def run_label(results: dict) -> str:
    """A short label: the output folder's name and the weights kind."""
    folder = Path(results["_path"]).parent.name
    return f"{folder} ({results['task']}, {results.get('weights', {}).get('kind', '?')})"


def compare_markdown(runs: list[dict]) -> str:
    """One row per run: headline metrics with CIs, and per-class F1 where the runs share classes."""
    labels = [list(r["metrics"].get("per_class", {})) for r in runs]
    shared = labels[0] if labels and all(lab == labels[0] for lab in labels) else []
    head = ["run", "weights sha256", "n test", "accuracy", "balanced accuracy (CI)", "weighted F1 (CI)", "macro F1"]
    if any("dice" in r["metrics"] for r in runs):
        head += ["Dice (CI)", "IoU"]
    head += [f"F1 {c}" for c in shared]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m = r["metrics"]
        tests = list(r.get("test_metrics", {})) or ["test"]
        row = [run_label(r), f"`{r.get('weights', {}).get('sha256', '')[:12]}`", str(r.get("n", {}).get(tests[0], "-")),
               _fmt(m.get("accuracy")), _fmt(m.get("balanced_accuracy"), m.get("balanced_accuracy_ci")),
               _fmt(m.get("weighted_f1"), m.get("weighted_f1_ci")), _fmt(m.get("macro_f1"))]
        if "Dice (CI)" in head:
            row += [_fmt(m.get("dice"), m.get("dice_ci")), _fmt(m.get("iou"))]
        row += [_fmt(m["per_class"][c]["f1"]) for c in shared]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(runs: list[dict], path: str | os.PathLike) -> Path:
    """Bar chart of each run's headline metric (weighted F1, or Dice) with its CI as error bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(runs) + 2), 4))
    names, values, low, high, ylabels = [], [], [], [], set()
    for r in runs:
        metric, ci_key, label = HEADLINE["segmentation" if "dice" in r["metrics"] else "classification"]
        v, ci = r["metrics"].get(metric, float("nan")), r["metrics"].get(ci_key) or []
        names.append(run_label(r).replace(" (", "\n("))
        values.append(v)
        low.append(v - ci[0] if ci else 0.0)
        high.append(ci[1] - v if ci else 0.0)
        ylabels.add(label)
    bars = ax.bar(range(len(runs)), values, yerr=[low, high], capsize=4, color="#4C72B0")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], label_type="center", color="white", fontsize=9)
    ax.set_xticks(range(len(runs)), labels=names, fontsize=8)
    ax.set_ylabel(" / ".join(sorted(ylabels)) + " (test, 95% CI)")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
