"""Metrics against scikit-learn on the same predictions; bootstrap intervals; Dice / IoU by hand."""

import numpy as np
import pytest
from sklearn import metrics as skm

from dinov3_us.eval.metrics import (
    batched_scores,
    bootstrap_ci,
    classification_metrics,
    dice_iou,
    segmentation_metrics,
)

LABELS = ["TT", "TV", "TC", "never"]  # class 3 appears in neither y_true nor y_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.choice(3, size=200, p=[0.6, 0.15, 0.25])
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.choice(3, size=200))
    y_pred[:5] = 2  # and a class predicted but rare
    m = classification_metrics(y_true, y_pred, LABELS, bootstrap=0)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    for c, lab in enumerate(LABELS):
        got = m["per_class"][lab]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[c], r[c], f[c], s[c]))
    assert m["confusion_matrix"]["labels"] == LABELS
    assert m["confusion_matrix"]["matrix"] == skm.confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    assert "weighted_f1_ci" not in m


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_a_class_missing_from_the_truth_but_predicted():
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"], bootstrap=0)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_bootstrap_intervals_contain_the_estimate_and_are_seeded():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 3, 300))
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"], bootstrap=500, seed=1)
    for key in ("weighted_f1", "balanced_accuracy"):
        low, high = m[f"{key}_ci"]
        assert low < m[key] < high and high - low < 0.2
    again = classification_metrics(y_true, y_pred, ["a", "b", "c"], bootstrap=500, seed=1)
    assert again["weighted_f1_ci"] == m["weighted_f1_ci"]
    other = bootstrap_ci(y_true, y_pred, 3, n=500, seed=2)
    assert other["weighted_f1"] != m["weighted_f1_ci"]
    assert m["ci_level"] == 0.95 and m["bootstrap"] == 500


def test_batched_scores_equal_one_by_one():
    rng = np.random.default_rng(4)
    y_true, preds = rng.integers(0, 3, 50), rng.integers(0, 3, (7, 50))
    scores = batched_scores(y_true, preds, 3, "weighted_f1")
    assert scores == pytest.approx([skm.f1_score(y_true, p, average="weighted") for p in preds])


def test_dice_iou_by_hand():
    truth = np.zeros((3, 4, 4), bool)
    pred = np.zeros((3, 4, 4), bool)
    truth[0, :2], pred[0, :1] = True, True  # 8 true pixels, 4 predicted inside them
    truth[1, 0, 0] = True  # missed completely
    # image 2: both empty
    dice, iou = dice_iou(pred, truth)
    assert dice == pytest.approx([2 * 4 / 12, 0.0, 1.0])
    assert iou == pytest.approx([4 / 8, 0.0, 1.0])
    m = segmentation_metrics(pred, truth, bootstrap=200)
    assert m["dice"] == pytest.approx(np.mean([2 / 3, 0.0, 1.0]))
    assert m["dice_ci"][0] <= m["dice"] <= m["dice_ci"][1]
