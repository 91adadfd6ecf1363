"""Weighted k-nearest-neighbour classification on frozen features (the DINO/DINOv2/v3 protocol).

Features are the L2-normalised CLS token of the last block; similarity is cosine; each of the k
nearest train samples votes for its class with weight exp(similarity / T) (T = 0.07). The ks
{10, 20, 100, 200} are clipped to the train size (duplicates dropped).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dinov3_us.errors import ConfigError, DataError

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
