"""Weighted k-nearest-neighbour classification on frozen features (the DINO/DINOv2/v3 protocol).

Features are the L2-normalised CLS token of the last block; similarity is cosine; each of the k
nearest train samples votes for its class with weight exp(similarity / T) (T = 0.07). The ks
{10, 20, 100, 200} are clipped to the train size (duplicates dropped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dinov3_us.errors import ConfigError, DataError
from dinov3_us.eval.config import KnnConfig
from dinov3_us.eval.features import FeatureSet
from dinov3_us.eval.metrics import batched_scores

logger = logging.getLogger("dinov3_us")


def effective_ks(ks: list[int], n_train: int) -> list[int]:
    """`ks` clipped to `n_train`, sorted, without duplicates."""
    if not ks or any(k < 1 for k in ks):
        raise ConfigError(f"knn.ks must be >= 1, got {ks}")
    if n_train < 1:
        raise DataError("kNN needs at least one train sample")
    return sorted({min(k, n_train) for k in ks})


@torch.no_grad()
def knn_predict(
    train: Tensor, train_targets: Tensor, query: Tensor, ks: list[int], num_classes: int,
    temperature: float = 0.07, chunk: int = 1024,
) -> dict[int, Tensor]:
    """{k: predicted classes [Nq]} of queries [Nq, D] against train [Nt, D] (both normalised here)."""
    if temperature <= 0:
        raise ConfigError(f"knn.temperature must be > 0, got {temperature}")
    train, query = F.normalize(train.float(), dim=1), F.normalize(query.float(), dim=1)
    k_max = max(ks)
    out = {k: [] for k in ks}
    for start in range(0, len(query), chunk):
        sims = query[start : start + chunk] @ train.T  # [q, Nt]
        top_sims, top_idx = sims.topk(k_max, dim=1)  # [q, k_max], sorted descending
        votes = F.one_hot(train_targets[top_idx], num_classes).float() * (top_sims / temperature).exp()[..., None]
        cumulative = votes.cumsum(dim=1)  # [q, k_max, C]: the votes of the first k neighbours at index k - 1
        for k in ks:
            out[k].append(cumulative[:, k - 1].argmax(-1))
    return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in out.items()}


def knn_features(tensors: dict[str, Tensor]) -> Tensor:
    """The kNN representation of cached features: the last block's CLS token [N, D]."""
    return tensors["cls"][:, -1]


def select_k(val_preds: dict[int, Tensor], val_targets: np.ndarray, scorer) -> tuple[int, dict[int, float]]:
    """(best k, {k: val score}) with `scorer(y_true, y_pred) -> float`; ties go to the smaller k."""
    scores = {k: float(scorer(val_targets, p.numpy())) for k, p in val_preds.items()}
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


@dataclass
class KnnProbe:
    """A weighted kNN over a train split's features, with the k chosen on a val split (`fit_knn`)."""

    train_x: Tensor  # [Nt, D]
    train_y: Tensor  # [Nt]
    ks: list[int]
    num_classes: int
    temperature: float
    best_k: int
    val_preds: dict[int, Tensor] = field(default_factory=dict)  # {k: [Nv]} (empty without val)
    val_scores: dict[int, float] = field(default_factory=dict)

    def predict(self, fs: FeatureSet) -> dict[int, Tensor]:
        """{k: predicted classes [N]} of every k for the samples of `fs`."""
        return knn_predict(self.train_x, self.train_y, knn_features(fs.tensors), self.ks, self.num_classes,
                           self.temperature)


def fit_knn(train: FeatureSet, val: FeatureSet | None, cfg: KnnConfig, num_classes: int) -> KnnProbe:
    """The kNN protocol's choices: the ks clipped to the train size, the best k on `val` by `cfg.select_metric`
    (ties to the smaller k), or `cfg.default_k` without val."""
    ks = effective_ks(cfg.ks, len(train))
    probe = KnnProbe(knn_features(train.tensors), torch.as_tensor(train.targets), ks, num_classes, cfg.temperature,
                     min(cfg.default_k, len(train)))
    if val is not None:
        probe.val_preds = probe.predict(val)
        probe.best_k, probe.val_scores = select_k(
            probe.val_preds, val.targets, lambda t, p: batched_scores(t, p[None], num_classes, cfg.select_metric)[0])
    return probe
