"""Real data (../shared/data/hc18): head-circumference terciles by linear probe and kNN, dense probe on head masks.

The backbone is a random vit_test (no pretrained weights ship with the repository): these tests prove
the pipeline on real images, labels and masks (patient-level splits, train-quantile bins, metrics
equal to scikit-learn's on the same predictions), not the quality of a representation.
"""

import numpy as np
import pytest
import torch
from eval_testutil import run_tool
from sklearn import metrics as skm

from dinov3_us.eval.backbone import load_eval_backbone
from dinov3_us.eval.config import LinearConfig, SegmentationConfig
from dinov3_us.eval.data import EvalDataset, EvalTransform, assign_targets
from dinov3_us.eval.features import extract_features
from dinov3_us.eval.knn import knn_predict
from dinov3_us.eval.linear import CachedFeatures, make_grid, predict_grid, train_linear_grid
from dinov3_us.eval.metrics import classification_metrics, dice_iou, segmentation_metrics
from dinov3_us.eval.segmentation import predict_masks, train_segmentation_grid

SIZE = 64
pytestmark = pytest.mark.slow  # shards of the real HC18 images (a subprocess), then probes trained on them


@pytest.fixture(scope="module")
def hc18_shards(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_hc18") / "hc18"
    proc = run_tool("build_dataset.py", "--source", "hc18", "--root", data_dir / "hc18", "--out", out, "--no-progress",
                    "--resize", 96)  # stored at 96 px (shorter side): evaluated at 64
    assert proc.returncode == 0, proc.stderr
    return out


def _splits(root, with_mask=False):
    t = EvalTransform(SIZE, 1)
    return [EvalDataset(f"{root}:{s}", t, with_mask=with_mask) for s in ("train", "val", "test")]


def test_head_circumference_terciles(hc18_shards):
    train, val, test = _splits(hc18_shards)
    classes = assign_targets([train, val, test], "head_circumference_mm", bins=3)
    assert len(classes) == 3 and classes[0].startswith("q1 [-inf, ")
    counts = np.bincount(train.targets, minlength=3)
    assert counts.max() - counts.min() <= 2 and len(train) > 500  # train quantiles: balanced bins
    assert all((ds.targets >= 0).all() for ds in (train, val, test))
    assert not (set(train.groups) & set(val.groups)) and not (set(train.groups) & set(test.groups))  # by subject
    model = load_eval_backbone("random", arch="vit_test", img_size=SIZE).model
    feats = [extract_features(model, ds, n_blocks=2, batch_size=64, progress=False) for ds in (train, val, test)]
    cfg = LinearConfig(n_last_blocks=[1, 2], epochs=10, batch_size=32)
    tr, va, te = (CachedFeatures(f) for f in feats)
    result = train_linear_grid(tr, va, make_grid(cfg, depth=2), 3, cfg, embed_dim=model.embed_dim)
    pred = predict_grid(result.grid, te)[result.best].numpy()
    m = classification_metrics(te.targets, pred, classes, bootstrap=200)
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(te.targets, pred, average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(te.targets, pred))
    assert m["confusion_matrix"]["matrix"] == skm.confusion_matrix(te.targets, pred, labels=range(3)).tolist()
    assert m["balanced_accuracy"] > 0.38  # chance 1/3; measured 0.45 (head size is visible even to random features)
    knn = knn_predict(feats[0].tensors["cls"][:, -1], torch.as_tensor(train.targets), feats[2].tensors["cls"][:, -1],
                      [20], 3)[20].numpy()
    km = classification_metrics(te.targets, knn, classes, bootstrap=0)
    assert km["accuracy"] == pytest.approx(skm.accuracy_score(te.targets, knn))


def test_dense_probe_on_head_masks(hc18_shards):
    train, val, test = _splits(hc18_shards, with_mask=True)
    model = load_eval_backbone("random", arch="vit_test", img_size=SIZE).model
    feats = [extract_features(model, ds, patch_blocks=1, batch_size=64, progress=False) for ds in (train, val, test)]
    masks = feats[0].tensors["masks"]
    assert masks.shape == (len(train), SIZE, SIZE) and set(masks.unique().tolist()) <= {0, 255}
    assert 0.05 < (masks > 0).float().mean() < 0.9  # filled head ellipses, not outlines
    cfg = SegmentationConfig(epochs=4, learning_rates=[1.0, 10.0, 100.0])
    result = train_segmentation_grid(feats[0], feats[1], cfg, grid_hw=SIZE // 16)
    pred = predict_masks(result, feats[2], result.best)
    truth = feats[2].tensors["masks"].numpy() >= 128
    m = segmentation_metrics(pred, truth, bootstrap=200)
    dice, _ = dice_iou(pred, truth)
    assert m["dice"] == pytest.approx(dice.mean()) and m["dice_ci"][0] <= m["dice"] <= m["dice_ci"][1]
    assert m["dice"] > 0.1
