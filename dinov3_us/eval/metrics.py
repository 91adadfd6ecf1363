"""Classification and segmentation metrics, with seeded bootstrap confidence intervals.

Everything is computed from confusion matrices (numpy), so the bootstrap evaluates all resamples at
once. Conventions are scikit-learn's: precision / recall / F1 of a class with no predicted (resp.
true) sample are 0; balanced accuracy is the mean recall over the classes present in `y_true`; macro
F1 averages the classes present in `y_true` or `y_pred`; weighted F1 weights each class by its support.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger("dinov3_us")

SCALAR_METRICS = ("accuracy", "balanced_accuracy", "weighted_f1", "macro_f1")


def confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[..., n] true and predicted class indices -> [..., C, C] counts (rows: truth, columns: prediction)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    lead = y_true.shape[:-1]
    flat_t, flat_p = y_true.reshape(-1, y_true.shape[-1]), y_pred.reshape(-1, y_pred.shape[-1])  # [R, n]
    rows = np.arange(flat_t.shape[0])[:, None] * num_classes * num_classes  # [R, 1]
    counts = np.bincount((rows + flat_t * num_classes + flat_p).ravel(), minlength=flat_t.shape[0] * num_classes**2)
    return counts.reshape(*lead, num_classes, num_classes)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Scalar metrics of [..., C, C] confusion matrices: each value has the leading shape [...]."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)  # [..., C]
    support, predicted = cm.sum(-1), cm.sum(-2)  # [..., C]
    total = support.sum(-1)  # [...]
    recall = _div(tp, support)
    f1 = _div(2 * tp, support + predicted)
    present = support > 0
    seen = present | (predicted > 0)
    return {
        "accuracy": _div(tp.sum(-1), total),
        "balanced_accuracy": _div((recall * present).sum(-1), present.sum(-1).astype(np.float64)),
        "weighted_f1": _div((f1 * support).sum(-1), total),
        "macro_f1": _div((f1 * seen).sum(-1), seen.sum(-1).astype(np.float64)),
    }


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, *, n: int = 1000, ci: float = 0.95, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals {metric: [low, high]} of every scalar metric (samples drawn with replacement)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if n <= 0 or len(y_true) == 0:
        return {}
    idx = np.random.default_rng(seed).integers(0, len(y_true), size=(n, len(y_true)))  # [R, N]
    scores = scores_from_confusion(confusion_matrices(y_true[idx], y_pred[idx], num_classes))  # {m: [R]}
    alpha = (1.0 - ci) / 2
    return {m: [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] for m, v in scores.items()}


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    labels: Sequence[str],
    *,
    bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict:
    """The report's metrics of class-index predictions.

    Returns `accuracy`, `balanced_accuracy`, `weighted_f1`, `macro_f1`, `per_class` {label: {precision,
    recall, f1, support}}, `confusion_matrix` {labels, matrix}, and `weighted_f1_ci` /
    `balanced_accuracy_ci` ([low, high] at level `ci`, seeded bootstrap over the samples; absent when
    `bootstrap` is 0), plus `ci_level` and `bootstrap`.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    num_classes = len(labels)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-d shapes")
    cm = confusion_matrices(y_true, y_pred, num_classes)  # [C, C]
    out = {m: float(v) for m, v in scores_from_confusion(cm).items()}
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    precision, recall = _div(tp, predicted), _div(tp, support)
    f1 = _div(2 * tp, support + predicted)
    out["per_class"] = {
        str(lab): {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                   "support": int(support[c])}
        for c, lab in enumerate(labels)
    }
    out["confusion_matrix"] = {"labels": [str(lab) for lab in labels], "matrix": cm.tolist()}
    if bootstrap > 0:
        intervals = bootstrap_ci(y_true, y_pred, num_classes, n=bootstrap, ci=ci, seed=seed)
        out["weighted_f1_ci"] = intervals["weighted_f1"]
        out["balanced_accuracy_ci"] = intervals["balanced_accuracy"]
        out["ci_level"], out["bootstrap"] = ci, bootstrap
    return out


def batched_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, metric: str) -> np.ndarray:
    """One scalar `metric` per row of [H, n] predictions against [n] truth (model selection over many heads)."""
    y_pred = np.asarray(y_pred)
    y_true = np.broadcast_to(np.asarray(y_true), y_pred.shape)
    return scores_from_confusion(confusion_matrices(y_true, y_pred, num_classes))[metric]


def chance_levels(y_true: np.ndarray, num_classes: int, metric: str, *, n: int = 200, seed: int = 0) -> dict:
    """`metric` of predictions that ignore the image: uniform random guesses (mean of `n`) and the majority class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    guesses = np.random.default_rng(seed).integers(0, num_classes, size=(n, len(y_true)))  # [n, N]
    majority = np.full((1, len(y_true)), np.bincount(y_true, minlength=num_classes).argmax())  # [1, N]
    return {"metric": metric, "uniform_guess": float(batched_scores(y_true, guesses, num_classes, metric).mean()),
            "majority_class": float(batched_scores(y_true, majority, num_classes, metric)[0])}


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of binary masks [N, H, W]; an image with both masks empty scores 1."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    inter = (pred & truth).reshape(len(pred), -1).sum(1).astype(np.float64)
    p, t = pred.reshape(len(pred), -1).sum(1), truth.reshape(len(truth), -1).sum(1)
    union = (p + t - inter).astype(np.float64)
    empty = (p + t) == 0
    dice = np.where(empty, 1.0, _div(2 * inter, (p + t).astype(np.float64)))
    iou = np.where(empty, 1.0, _div(inter, union))
    return dice, iou


def mean_ci(values: np.ndarray, *, n: int = 1000, ci: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval [low, high] of the mean of per-sample `values`."""
    values = np.asarray(values, dtype=np.float64)
    if n <= 0 or len(values) == 0:
        return []
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n, len(values)))  # [R, N]
    means = values[idx].mean(1)
    alpha = (1.0 - ci) / 2
    return [float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))]


def segmentation_metrics(
    pred: np.ndarray, truth: np.ndarray, *, bootstrap: int = 1000, ci: float = 0.95, seed: int = 0
) -> dict:
    """Mean per-image `dice` and `iou` of binary masks [N, H, W], their bootstrap CIs, and `pixel_accuracy`."""
    dice, iou = dice_iou(pred, truth)
    out = {
        "dice": float(dice.mean()) if len(dice) else 0.0,
        "iou": float(iou.mean()) if len(iou) else 0.0,
        "pixel_accuracy": float((np.asarray(pred, bool) == np.asarray(truth, bool)).mean()) if len(dice) else 0.0,
        "dice_median": float(np.median(dice)) if len(dice) else 0.0,
    }
    if bootstrap > 0:
        out["dice_ci"] = mean_ci(dice, n=bootstrap, ci=ci, seed=seed)
        out["iou_ci"] = mean_ci(iou, n=bootstrap, ci=ci, seed=seed)
        out["ci_level"], out["bootstrap"] = ci, bootstrap
    return out
