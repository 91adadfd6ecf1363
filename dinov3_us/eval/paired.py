"""Paired comparison of two evaluation runs on the same test samples, resampling patients.

Two models scored on one test set are compared on the *same* samples, so the question "is B better
than A?" is answered by the bootstrap distribution of the difference `metric(B) - metric(A)`, not
by whether two separate confidence intervals overlap (which is far less powerful and not a test).
Images of one patient are correlated, so the resampling unit is the patient (the `group` column
of `predictions.csv`): each bootstrap replicate draws patients with replacement and weights every
image by how often its patient was drawn. With one image per group this is the ordinary bootstrap.

    diff = paired_difference(run_a_predictions, run_b_predictions, metric="weighted_f1")
    diff["difference"], diff["ci"], diff["p_not_better"]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dinov3_us.errors import DataError
from dinov3_us.eval.metrics import chance_levels, scores_from_confusion
from dinov3_us.eval.predictions import load_predictions, prediction_columns
from dinov3_us.eval.report import chance_text, run_label

PER_SAMPLE_METRICS = ("dice", "iou")  # segmentation: the mean of a per-image value


def group_bootstrap_weights(groups: Sequence[str], *, n: int, seed: int) -> np.ndarray:
    """[n, N] weights: how often each sample's group was drawn in each of `n` replicates of the groups."""
    names, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)  # inverse [N]
    draws = np.random.default_rng(seed).integers(0, len(names), size=(n, len(names)))  # [n, G]
    counts = np.zeros((n, len(names)))
    np.add.at(counts, (np.arange(n)[:, None], draws), 1.0)  # [n, G]
    return counts[:, inverse]  # [n, N]


def weighted_scores(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, num_classes: int,
                    metric: str) -> np.ndarray:
    """`metric` of class predictions under each row of sample `weights` [R, N] -> [R]."""
    cell = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)  # [N]
    onehot = np.zeros((len(cell), num_classes * num_classes))
    onehot[np.arange(len(cell)), cell] = 1.0
    cm = (weights @ onehot).reshape(len(weights), num_classes, num_classes)  # [R, C, C]
    return scores_from_confusion(cm)[metric]


def _metric_under(run: dict, weights: np.ndarray, metric: str, num_classes: int) -> np.ndarray:
    if metric in PER_SAMPLE_METRICS:
        values = np.asarray(run[metric], dtype=np.float64)  # [N]
        return (weights @ values) / np.maximum(weights.sum(1), 1e-12)
    return weighted_scores(run["y_true"], run["y_pred"], weights, num_classes, metric)


def align(a: dict, b: dict) -> tuple[dict, dict]:
    """The two runs' per-sample columns restricted to, and ordered by, run A's sample keys.

    Raises DataError when the runs were not scored on the same samples (or their labels differ).
    """
    index_b = {k: i for i, k in enumerate(b["keys"])}
    missing = [k for k in a["keys"] if k not in index_b]
    if missing or len(a["keys"]) != len(b["keys"]):
        raise DataError(f"the two runs were not scored on the same test samples ({len(a['keys'])} vs "
                        f"{len(b['keys'])}; e.g. {missing[:3]} only in the first)")
    order = np.array([index_b[k] for k in a["keys"]])
    b = {k: (np.asarray(v)[order] if isinstance(v, (list, np.ndarray)) else v) for k, v in b.items()}
    if "y_true" in a and not np.array_equal(np.asarray(a["y_true"]), b["y_true"]):
        raise DataError("the two runs give the same test samples different labels (different class tasks?)")
    return a, b


def paired_difference(a: dict, b: dict, *, metric: str, num_classes: int | None = None, n: int = 2000,
                      ci: float = 0.95, seed: int = 0) -> dict:
    """Bootstrap (patients resampled) of `metric(B) - metric(A)` on the samples both runs scored.

    `a` / `b` hold per-sample columns (`keys`, `groups`, and `y_true` + `y_pred`, or `dice` / `iou`),
    as read by `dinov3_us.eval.predictions.load_predictions`. Returns `metric`, `a`, `b`,
    `difference`, `ci` [low, high], `p_not_better` (the share of replicates where B does not beat A:
    a one-sided bootstrap p-value), `n_samples`, `n_groups`, `replicates`.
    """
    a, b = align(a, b)
    if metric not in PER_SAMPLE_METRICS:
        num_classes = num_classes or int(max(np.max(a["y_true"]), np.max(a["y_pred"]), np.max(b["y_pred"]))) + 1
    full = np.ones((1, len(a["keys"])))
    weights = group_bootstrap_weights(a["groups"], n=n, seed=seed)  # [n, N]
    value_a, value_b = (float(_metric_under(r, full, metric, num_classes)[0]) for r in (a, b))
    diffs = _metric_under(b, weights, metric, num_classes) - _metric_under(a, weights, metric, num_classes)
    alpha = (1.0 - ci) / 2
    return {"metric": metric, "a": value_a, "b": value_b, "difference": value_b - value_a,
            "ci": [float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))], "ci_level": ci,
            "p_not_better": float((diffs <= 0).mean()), "n_samples": len(a["keys"]),
            "n_groups": len(set(a["groups"])), "replicates": n}


def paired_markdown(runs: list[dict], *, n: int = 2000, seed: int = 0) -> str:
    """A table of each run against the first (the baseline) on its first test set, or "" when not comparable.

    `runs` are loaded results (`dinov3_us.eval.report.load_results`); their folders must hold
    `predictions.csv`. The headline metric is weighted F1 (classification) or Dice (segmentation).
    """
    if len(runs) < 2:
        return ""
    base = runs[0]
    metric = "dice" if "dice" in base["metrics"] else "weighted_f1"
    base_pred = load_predictions(base["_path"])
    lines = [f"Paired against {run_label(base)} on the same {len(base_pred['keys'])} test samples "
             f"({len(set(base_pred['groups']))} patients resampled, {n} replicates):", "",
             f"| run | {metric} | difference [95% CI] | P(not better) |", "|---|---|---|---|"]
    for run in runs[1:]:
        d = paired_difference(base_pred, load_predictions(run["_path"], base_pred["dataset"]), metric=metric,
                              num_classes=len(base.get("classes", [])) or None, n=n, seed=seed)
        lines.append(f"| {run_label(run)} | {d['b']:.3f} | {d['difference']:+.3f} [{d['ci'][0]:+.3f}, "
                     f"{d['ci'][1]:+.3f}] | {d['p_not_better']:.3f} |")
    return "\n".join(lines) + "\n"


def versus_random(results: dict, random_results: dict, *, n: int = 2000, seed: int = 0) -> dict:
    """The headline metric of `results` against a random initialisation scored on the same test samples.

    Both dicts are runners' results with their `predictions` rows. Returns `paired_difference`'s fields
    (`a` = random, `b` = this backbone) and, for classification, `chance` (`chance_levels`).
    """
    metric = "dice" if "dice" in results["metrics"] else "weighted_f1"
    num_classes = len(results.get("classes") or []) or None
    base = prediction_columns(random_results["predictions"], where="random baseline")
    ours = prediction_columns(results["predictions"], base["dataset"], where="evaluated backbone")
    out = paired_difference(base, ours, metric=metric, num_classes=num_classes, n=n, seed=seed)
    out |= {"test_set": base["dataset"], "random_sha256": random_results["weights"]["sha256"]}
    if metric != "dice":
        out["chance"] = chance_levels(base["y_true"], num_classes or int(base["y_true"].max()) + 1, metric, seed=seed)
    return out


def versus_random_markdown(runs: list[dict]) -> str:
    """A table of every run that carries `vs_random` (its metric, random init's, the paired difference, chance)."""
    rows = [r for r in runs if r.get("vs_random")]
    if not rows:
        return ""
    lines = ["Against a random initialisation of the same architecture, on the same test samples (paired "
             "bootstrap, patients resampled):", "",
             "| run | metric | this backbone | random init | difference [95% CI] | P(not better) | chance "
             "(uniform guess / majority class) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["vs_random"]
        lines.append(f"| {run_label(r)} | {v['metric']} | {v['b']:.3f} | {v['a']:.3f} | {v['difference']:+.3f} "
                     f"[{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}] | {v['p_not_better']:.3f} | "
                     f"{chance_text(v.get('chance'), 3)} |")
    return "\n".join(lines) + "\n"
