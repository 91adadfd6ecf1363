"""bench/bench_knn_neighbours.py's measure on features whose content is known: a plane code, or a nuisance only."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
try:
    from bench_knn_neighbours import neighbour_agreement
finally:
    sys.path.remove(str(BENCH))


def _split(n: int, seed: int):
    rng = np.random.default_rng(seed)
    attrs = {"gain": rng.uniform(0.85, 1.1, n), "size": rng.uniform(0.36, 0.42, n),
             "aspect": rng.uniform(0.74, 0.84, n), "tilt": rng.uniform(-0.25, 0.25, n),
             "upside_down": rng.random(n) < 0.5}
    return rng.integers(0, 3, n), attrs


def test_a_plane_code_agrees_on_the_plane_and_a_gain_code_on_the_gain():
    (ytr, atr), (yte, ate) = _split(300, 0), _split(60, 1)
    noise = np.random.default_rng(2)

    def plane_code(y):  # one direction per plane, plus noise
        return torch.tensor(np.eye(3)[y] + 0.01 * noise.standard_normal((len(y), 3)), dtype=torch.float32)

    rows = neighbour_agreement(plane_code(ytr), plane_code(yte), ytr, yte, atr, ate, k=10)
    assert rows["same_plane"] == 1.0
    assert 0.8 < rows["gain_distance_ratio"] < 1.2 and 0.3 < rows["same_orientation"] < 0.7

    def gain_code(a):  # the gain as an angle: cosine neighbours are the images of the nearest gain
        phi = (a["gain"] - 0.85) / 0.25 * np.pi / 2
        return torch.tensor(np.stack([np.cos(phi), np.sin(phi)], 1), dtype=torch.float32)

    rows = neighbour_agreement(gain_code(atr), gain_code(ate), ytr, yte, atr, ate, k=10)
    assert rows["gain_distance_ratio"] < 0.1
    assert abs(rows["same_plane"] - 1 / 3) < 0.12 and 0.8 < rows["size_distance_ratio"] < 1.2
