"""Paired run comparison (patients resampled) and the predictions.csv it reads."""

import numpy as np
import pytest

from dinov3_us.errors import DataError
from dinov3_us.eval.metrics import classification_metrics
from dinov3_us.eval.paired import group_bootstrap_weights, paired_difference, weighted_scores
from dinov3_us.eval.predictions import (
    classification_rows,
    load_predictions,
    segmentation_rows,
    write_predictions,
)


def run(y_true, y_pred, groups=None):
    keys = [f"s{i}" for i in range(len(y_true))]
    return {"keys": keys, "groups": groups or keys, "y_true": np.array(y_true), "y_pred": np.array(y_pred)}


def test_group_weights_keep_patients_whole():
    groups = ["a", "a", "a", "b", "c", "c"]
    w = group_bootstrap_weights(groups, n=500, seed=0)  # [500, 6]
    assert w.shape == (500, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 1] == w[:, 2]).all() and (w[:, 4] == w[:, 5]).all()
    draws = w[:, [0, 3, 4]].sum(1)  # one column per patient: three patients drawn per replicate
    assert (draws == 3).all() and w[:, 0].std() > 0


def test_weighted_scores_with_unit_weights_equal_the_report_metrics():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    full = classification_metrics(y_true, y_pred, ["a", "b", "c"], bootstrap=0)
    for metric in ("weighted_f1", "balanced_accuracy", "accuracy"):
        assert weighted_scores(y_true, y_pred, np.ones((1, 50)), 3, metric)[0] == pytest.approx(full[metric])


def test_identical_runs_differ_by_nothing_and_a_better_run_is_detected():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    noisy = np.where(rng.random(120) < 0.5, rng.integers(0, 3, 120), y)
    same = paired_difference(run(y, noisy), run(y, noisy), metric="weighted_f1", n=300)
    assert same["difference"] == 0 and same["ci"] == [0, 0] and same["p_not_better"] == 1.0
    better = paired_difference(run(y, noisy), run(y, y), metric="weighted_f1", n=300)
    assert better["difference"] > 0.2 and better["ci"][0] > 0 and better["p_not_better"] == 0.0
    worse = paired_difference(run(y, y), run(y, noisy), metric="accuracy", n=300)
    assert worse["difference"] < 0 and worse["p_not_better"] == 1.0


def test_patient_resampling_widens_the_interval_of_correlated_images():
    rng = np.random.default_rng(2)
    y = np.repeat(rng.integers(0, 2, 20), 6)  # 20 patients x 6 images with the same label
    a = np.repeat(rng.integers(0, 2, 20), 6)  # whole patients right or wrong together
    b = np.repeat(rng.integers(0, 2, 20), 6)
    patients = [f"p{i // 6}" for i in range(120)]
    per_image = paired_difference(run(y, a), run(y, b), metric="accuracy", n=1000)
    per_patient = paired_difference(run(y, a, patients), run(y, b, patients), metric="accuracy", n=1000)
    assert per_patient["n_groups"] == 20 and per_image["n_groups"] == 120
    assert per_patient["difference"] == per_image["difference"]
    width = {k: d["ci"][1] - d["ci"][0] for k, d in (("image", per_image), ("patient", per_patient))}
    assert width["patient"] > 1.8 * width["image"]


def test_runs_are_aligned_by_key_and_must_share_samples():
    y, a, b = np.array([0, 1, 2, 1]), np.array([0, 1, 0, 0]), np.array([0, 1, 2, 0])
    ra, rb = run(y, a), run(y, b)
    shuffled = {"keys": rb["keys"][::-1], "groups": rb["groups"][::-1], "y_true": y[::-1], "y_pred": b[::-1]}
    d1 = paired_difference(ra, rb, metric="weighted_f1", n=50)
    d2 = paired_difference(ra, shuffled, metric="weighted_f1", n=50)
    assert d1 == d2 and d1["difference"] > 0
    other = {**rb, "keys": ["x", "s1", "s2", "s3"]}
    with pytest.raises(DataError, match="same test samples"):
        paired_difference(ra, other, metric="weighted_f1")
    with pytest.raises(DataError, match="different labels"):
        paired_difference(ra, {**rb, "y_true": np.array([1, 1, 2, 1])}, metric="weighted_f1")


def test_per_image_dice_difference():
    keys = [f"k{i}" for i in range(40)]
    a = {"keys": keys, "groups": keys, "dice": np.full(40, 0.5)}
    b = {"keys": keys, "groups": keys, "dice": np.linspace(0.5, 0.9, 40)}
    d = paired_difference(a, b, metric="dice", n=500)
    assert d["difference"] == pytest.approx(0.2) and 0 < d["ci"][0] < 0.2 < d["ci"][1]


class Split:  # what a FeatureSet / EvalDataset offers the row builders
    keys, groups, targets = ["a", "b", "c"], ["p1", "p1", "p2"], np.array([0, 2, 1])


def test_predictions_csv_round_trip_and_errors(tmp_path):
    rows = classification_rows("hc18:test", Split, np.array([0, 1, 1]), ["q1", "q2", "q3"])
    assert rows[1] == {"dataset": "hc18:test", "key": "b", "group": "p1", "target": 2, "prediction": 1,
                       "target_name": "q3", "prediction_name": "q2"}
    rows += classification_rows("other", Split, np.array([2, 2, 2]), ["q1", "q2", "q3"])
    write_predictions(rows, tmp_path / "predictions.csv")
    first = load_predictions(tmp_path)
    assert first["dataset"] == "hc18:test" and first["keys"] == ["a", "b", "c"]
    assert first["y_true"].tolist() == [0, 2, 1] and first["y_pred"].tolist() == [0, 1, 1]
    assert load_predictions(tmp_path / "results.json", "other")["y_pred"].tolist() == [2, 2, 2]
    with pytest.raises(DataError, match="no rows for test set 'nope'"):
        load_predictions(tmp_path, "nope")
    seg = tmp_path / "seg"
    seg.mkdir()
    dice, iou = np.array([0.5, 1, 0]), np.array([0.3, 1, 0])
    write_predictions(segmentation_rows("t", Split, dice, iou), seg / "predictions.csv")
    assert load_predictions(seg)["dice"].tolist() == [0.5, 1.0, 0.0]
    with pytest.raises(DataError, match="no predictions.csv"):
        load_predictions(tmp_path / "nowhere")
