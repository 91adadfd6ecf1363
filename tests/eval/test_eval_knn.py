"""Weighted kNN: exact votes on a hand-made case, separable clusters, k clipped to the train size."""

import pytest
import torch

from dinov3_us.errors import ConfigError
from dinov3_us.eval.knn import effective_ks, knn_predict


def test_temperature_weighted_votes_beat_the_plain_majority():
    # one very similar neighbour of class 1, two less similar of class 0
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    targets = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.05]])
    preds = knn_predict(train, targets, query, [1, 3], num_classes=2, temperature=0.07)
    assert preds[1].tolist() == [1] and preds[3].tolist() == [1]  # exp(1/.07) >> 2 exp(0.6/.07)
    flat = knn_predict(train, targets, query, [3], num_classes=2, temperature=100.0)
    assert flat[3].tolist() == [0]  # a high temperature is a plain majority vote


def test_separable_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 32, generator=g) * 4
    y_train, y_test = torch.arange(80) % 4, torch.arange(40) % 4
    train = centres[y_train] + torch.randn(80, 32, generator=g)
    test = centres[y_test] + torch.randn(40, 32, generator=g)
    ks = effective_ks([10, 20, 100, 200], len(train))
    assert ks == [10, 20, 80]
    preds = knn_predict(train, y_train, test, ks, num_classes=4, chunk=7)
    for k in ks[:2]:
        assert torch.equal(preds[k], y_test)


def test_bad_ks_and_temperature():
    with pytest.raises(ConfigError):
        effective_ks([0, 10], 5)
    with pytest.raises(ConfigError):
        knn_predict(torch.ones(2, 2), torch.tensor([0, 1]), torch.ones(1, 2), [1], 2, temperature=0.0)
