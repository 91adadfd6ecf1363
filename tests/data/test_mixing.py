"""Weighted mixing of pools: weights respected, deterministic, exactly-once within a cycle, resumable."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from dinov3_us.data.loader import make_data_loader
from dinov3_us.data.mixing import MixturePlan
from dinov3_us.data.shards import write_shard
from dinov3_us.data.streaming import ShufflePlan
from dinov3_us.errors import ConfigError


def _plans():
    return [ShufflePlan([50, 70], seed=1), ShufflePlan([30], seed=2), ShufflePlan([10, 10], seed=3)]


def test_weights_are_respected_over_many_draws():
    plan = MixturePlan(_plans(), [6, 3, 1], samples_per_epoch=40000, seed=5)
    pools = np.searchsorted([2, 3], plan.rank_plan(0, 0, 2).shard, side="right")  # shard id -> pool
    share = np.bincount(pools, minlength=3) / 20000
    assert np.allclose(share, [0.6, 0.3, 0.1], atol=0.015)


def test_mixing_is_deterministic_and_changes_per_epoch():
    a = MixturePlan(_plans(), [1, 1, 1], seed=5).rank_plan(3, 1, 2)
    b = MixturePlan(_plans(), [1, 1, 1], seed=5).rank_plan(3, 1, 2)
    c = MixturePlan(_plans(), [1, 1, 1], seed=5).rank_plan(4, 1, 2)
    assert all((x == y).all() for x, y in zip((a.shard, a.index, a.window), (b.shard, b.index, b.window), strict=True))
    assert len(a) == len(c) == 85 and not (a.index == c.index).all()


def test_no_repeat_within_a_cycle_across_ranks():
    plan = MixturePlan(_plans(), [0.2, 0.1, 0.7], samples_per_epoch=400, seed=0)
    ranks = [plan.rank_plan(0, r, 2) for r in range(2)]
    big = [(s, i) for rp in ranks for s, i, in zip(rp.shard.tolist(), rp.index.tolist(), strict=True) if s < 2]
    assert len(big) == len(set(big)) and len(big) < 120  # pool 0 drawn less than its size: each sample once
    small = Counter((s, i) for rp in ranks for s, i in zip(rp.shard.tolist(), rp.index.tolist(), strict=True) if s >= 3)
    assert set(small) == {(s, i) for s in (3, 4) for i in range(10)}  # pool 2 cycles: every sample, repeatedly
    assert max(small.values()) - min(small.values()) <= 2


def test_bad_weights_are_config_errors():
    with pytest.raises(ConfigError, match="3 numbers"):
        MixturePlan(_plans(), [1, 1])
    with pytest.raises(ConfigError, match="weights"):
        MixturePlan(_plans(), [0, 0, 0])


def _pool(root, prefix, n):
    root.mkdir()
    samples = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(buf, "PNG")
        samples.append((f"{prefix}{i:03d}", {"png": buf.getvalue(), "json": b'{"label": null}'}))
    write_shard(root / "train-000000.tar", samples[: n // 2])
    write_shard(root / "train-000001.tar", samples[n // 2 :])
    entries = [{"url": "train-000000.tar", "n": n // 2}, {"url": "train-000001.tar", "n": n - n // 2}]
    (root / "manifest.json").write_text(json.dumps({"shards": {"train": entries}}))
    return str(root)


def test_mixed_loader_resumes_exactly(tmp_path):
    pools = [_pool(tmp_path / "a", "a", 40), _pool(tmp_path / "b", "b", 12)]

    def loader(**kw):
        return make_data_loader(pools, weights=[0.5, 0.5], samples_per_epoch=60, batch_size=4, seed=9,
                                rank=1, world_size=2, collate_fn=lambda s: [m["__key__"] for _, m in s], **kw)

    ref = list(loader())
    assert len(ref) == 8 and sum(len(b) for b in ref) == 30
    assert 5 <= sum(k.startswith("b") for b in ref for k in b) <= 25
    ld = loader(num_workers=2)
    it = iter(ld)
    head = [next(it) for _ in range(3)]
    del it
    fresh = loader()
    fresh.load_state_dict(ld.state_dict())
    assert head + list(fresh) == ref
