"""The linear-head grid: one pass trains every head, each exactly as torch.optim.SGD would; selection on val."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinov3_us.errors import ConfigError
from dinov3_us.eval.config import LinearConfig
from dinov3_us.eval.features import FeatureSet, linear_input
from dinov3_us.eval.linear import (
    MIN_ITERATIONS_PER_EPOCH,
    CachedFeatures,
    LinearHeadGrid,
    _index_stream,
    make_grid,
    predict_grid,
    subsample_by_group,
    train_linear_grid,
)

D, C = 16, 3


def separable(n: int, seed: int, noise_cls: bool = False) -> FeatureSet:
    """Class centres on the last block's CLS token (or only on the mean patch token with `noise_cls`)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    centres = torch.randn(C, D, generator=torch.Generator().manual_seed(123)) * 3
    cls = torch.randn(n, 2, D, generator=g)
    patch_mean = torch.randn(n, D, generator=g)
    if noise_cls:
        patch_mean += centres[y]
    else:
        cls[:, -1] += centres[y]
    keys = [f"s{i}" for i in range(n)]
    return FeatureSet({"cls": cls, "patch_mean": patch_mean}, y.numpy(), [f"p{i // 2}" for i in range(n)], keys)


def test_grid_picks_a_good_head_and_beats_chance_on_test():
    cfg = LinearConfig(epochs=4, batch_size=16, n_last_blocks=[1, 2], losses=["ce", "focal"])
    specs = make_grid(cfg, depth=2)
    assert len(specs) == 13 * 2 * 2 * 2
    # the signal is only in the mean patch token: heads without avgpool cannot find it
    train, val, test = (CachedFeatures(separable(n, s, noise_cls=True)) for n, s in ((90, 0), (30, 1), (60, 2)))
    result = train_linear_grid(train, val, specs, C, cfg, embed_dim=D)
    assert result.best_spec.avgpool and result.val_scores[result.best] >= 0.9
    no_pool = [v for s, v in zip(specs, result.val_scores) if not s.avgpool]
    assert max(no_pool) < 0.8
    accuracy = (predict_grid(result.grid, test)[result.best].numpy() == test.targets).mean()
    assert accuracy > 0.9  # chance is 1/3


def test_each_head_follows_torch_sgd_with_cosine_exactly():
    cfg = LinearConfig(epochs=3, batch_size=16, n_last_blocks=[2], avgpool=[True], learning_rates=[0.1, 0.5],
                       weight_decay=1e-3)
    specs = make_grid(cfg)
    fs = separable(90, 0)
    result = train_linear_grid(CachedFeatures(fs), CachedFeatures(separable(30, 1)), specs, C, cfg, embed_dim=D)
    reference = LinearHeadGrid(specs, D, C, seed=0)  # same initialisation
    lin = torch.nn.Linear(3 * D, C)
    lin.weight.data, lin.bias.data = reference.weights[0][1].detach().clone(), reference.biases[0][1].detach().clone()
    opt = torch.optim.SGD(lin.parameters(), lr=0.5 * 16 / 256, momentum=0.9, weight_decay=1e-3)
    total = 3 * max(math.ceil(90 / 16), MIN_ITERATIONS_PER_EPOCH)  # one pass per epoch, at least 10 steps
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total, eta_min=0)
    stream, y, src = _index_stream(90, torch.Generator().manual_seed(0)), torch.as_tensor(fs.targets), fs.tensors
    src = CachedFeatures(fs)
    for _ in range(total):
        idx = torch.tensor([next(stream) for _ in range(16)])
        loss = F.cross_entropy(lin(linear_input(src.get(idx), 2, True)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    torch.testing.assert_close(result.grid.weights[0][1], lin.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result.grid.biases[0][1], lin.bias, atol=1e-6, rtol=1e-5)


def test_patience_stops_the_heads_and_keeps_their_best_weights():
    cfg = LinearConfig(epochs=60, batch_size=16, n_last_blocks=[1], avgpool=[False], learning_rates=[0.5, 1.0],
                       patience=2)
    specs = make_grid(cfg)
    result = train_linear_grid(CachedFeatures(separable(60, 0)), CachedFeatures(separable(30, 1)), specs, C, cfg,
                               embed_dim=D)
    assert result.epochs_run < 60  # val is perfect early, then cannot improve
    assert max(result.best_epochs) <= result.epochs_run - 2
    val = CachedFeatures(separable(30, 1))
    assert (predict_grid(result.grid, val)[result.best].numpy() == val.targets).mean() == result.val_scores.max()


def test_grid_rejects_blocks_beyond_the_depth():
    with pytest.raises(ConfigError, match="n_last_blocks"):
        make_grid(LinearConfig(n_last_blocks=[1, 4]), depth=2)


def test_label_subsampling_is_patient_level_stratified_and_seeded():
    targets = np.array([0, 0, 1, 1, 2, 2] * 10)
    groups = [f"p{i // 2}" for i in range(60)]  # 30 patients of 2 images, one class each
    idx = subsample_by_group(targets, groups, 0.2, seed=0)
    chosen = {groups[i] for i in idx}
    assert len(chosen) == 6 and len(idx) == 12  # whole patients only
    assert np.bincount(targets[idx], minlength=3).tolist() == [4, 4, 4]  # 2 patients per class
    assert subsample_by_group(targets, groups, 0.2, seed=0).tolist() == idx.tolist()
    assert subsample_by_group(targets, groups, 0.2, seed=1).tolist() != idx.tolist()
    assert len(subsample_by_group(targets, groups, 0.01, seed=0)) == 6  # >= 1 patient per class
    assert len(subsample_by_group(targets, groups, 1.0, seed=0)) == 60
