"""Per-sample test predictions of an evaluation run: `predictions.csv` beside `results.json`.

One row per test sample, so that runs can be compared on the same samples
(`dinov3_us.eval.paired`, `tools/compare_results.py`) and errors inspected image by image:

    classification: dataset, key, group, target, prediction, target_name, prediction_name
    segmentation:   dataset, key, group, dice, iou

`key` is the sample's shard key, `group` its patient (or the key where the data names none).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from dinov3_us.errors import DataError
from dinov3_us.fileio import atomic_path

CLASSIFICATION_COLUMNS = ("dataset", "key", "group", "target", "prediction", "target_name", "prediction_name")
SEGMENTATION_COLUMNS = ("dataset", "key", "group", "dice", "iou")


def classification_rows(dataset: str, features, y_pred: np.ndarray, classes: list[str]) -> list[dict]:
    """Rows of one test set's class predictions; `features` has `keys`, `groups` and `targets`."""
    return [{"dataset": dataset, "key": k, "group": g, "target": int(t), "prediction": int(p),
             "target_name": classes[int(t)], "prediction_name": classes[int(p)]}
            for k, g, t, p in zip(features.keys, features.groups, features.targets, y_pred)]


def segmentation_rows(dataset: str, features, dice: np.ndarray, iou: np.ndarray) -> list[dict]:
    """Rows of one test set's per-image Dice and IoU."""
    return [{"dataset": dataset, "key": k, "group": g, "dice": float(d), "iou": float(j)}
            for k, g, d, j in zip(features.keys, features.groups, dice, iou)]


def write_predictions(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write `rows` (all classification or all segmentation) as CSV, atomically."""
    path = Path(path)
    columns = SEGMENTATION_COLUMNS if rows and "dice" in rows[0] else CLASSIFICATION_COLUMNS
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def load_predictions(run: str | os.PathLike, dataset: str | None = None) -> dict:
    """Columns of one test set of a run (a run folder, or its results.json / predictions.csv).

    Returns {"dataset", "keys", "groups", and "y_true" / "y_pred" (int arrays) or "dice" / "iou"
    (float arrays)}. `dataset` defaults to the first test set in the file.
    """
    path = Path(run)
    if path.suffix in (".json", ".csv"):
        path = path.parent
    path = path / "predictions.csv"
    if not path.is_file():
        raise DataError(f"{path}: no predictions.csv (runs evaluated before it existed lack one: rerun the "
                        "evaluation to compare runs on the same samples)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return prediction_columns(rows, dataset, str(path))


def prediction_columns(rows: list[dict], dataset: str | None = None, where: str = "predictions") -> dict:
    """`load_predictions`'s columns from rows read from a CSV or made by `classification_rows` / `segmentation_rows`."""
    if not rows:
        raise DataError(f"{where}: no rows")
    dataset = dataset or rows[0]["dataset"]
    rows = [r for r in rows if r["dataset"] == dataset]
    if not rows:
        raise DataError(f"{where}: no rows for test set {dataset!r}")
    out = {"dataset": dataset, "keys": [r["key"] for r in rows], "groups": [r["group"] for r in rows]}
    try:
        if "dice" in rows[0]:
            out["dice"] = np.array([float(r["dice"]) for r in rows])
            out["iou"] = np.array([float(r["iou"]) for r in rows])
        else:
            out["y_true"] = np.array([int(r["target"]) for r in rows])
            out["y_pred"] = np.array([int(r["prediction"]) for r in rows])
    except (KeyError, ValueError) as e:
        raise DataError(f"{where}: malformed row ({e}); expected the columns {CLASSIFICATION_COLUMNS} or "
                        f"{SEGMENTATION_COLUMNS}") from None
    return out
