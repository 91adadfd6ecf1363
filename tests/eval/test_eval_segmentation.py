"""The dense probe on a trivial task: patch tokens that say 'foreground' give near-perfect Dice."""

import numpy as np
import torch

from dinov3_us.eval.config import SegmentationConfig
from dinov3_us.eval.features import FeatureSet
from dinov3_us.eval.segmentation import predict_masks, train_segmentation_grid

GRID, PATCH = 4, 8  # 4 x 4 patches of 8 px -> 32 px masks


def trivial(n: int, seed: int) -> FeatureSet:
    """Random patch-aligned masks; each token is [1, 0] + noise on foreground patches, [0, 1] + noise elsewhere."""
    rng = np.random.default_rng(seed)
    fg = rng.random((n, GRID, GRID)) < 0.4  # [N, 4, 4]
    tokens = np.where(fg.reshape(n, -1, 1), [1.0, 0.0], [0.0, 1.0]) + 0.05 * rng.standard_normal((n, GRID**2, 2))
    masks = np.kron(fg, np.ones((PATCH, PATCH))).astype(np.uint8) * 255  # [N, 32, 32]
    return FeatureSet({"patch_tokens": torch.tensor(tokens, dtype=torch.float32), "masks": torch.tensor(masks)},
                      np.full(n, -1), [str(i) for i in range(n)], [str(i) for i in range(n)])


def test_trivial_masks_are_segmented():
    cfg = SegmentationConfig(learning_rates=[1e-4, 10.0, 100.0], epochs=15, batch_size=8)
    train, val, test = trivial(40, 0), trivial(12, 1), trivial(12, 2)
    result = train_segmentation_grid(train, val, cfg, grid_hw=GRID)
    assert result.learning_rates[result.best] != 1e-4  # the tiny lr has not learnt
    assert result.val_scores[result.best] > 0.9 > result.val_scores[0]
    pred = predict_masks(result, test, result.best)
    assert pred.shape == (12, 32, 32)  # upsampled to the mask resolution
    truth = test.tensors["masks"].numpy() >= 128
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.9
