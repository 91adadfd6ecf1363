"""The shard stream in one process: partition by rank, worker-count independence, resume, bad data, pipe: URLs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinov3_us.data.loader import make_data_loader
from dinov3_us.data.shards import write_shard
from dinov3_us.data.streaming import ShufflePlan
from dinov3_us.errors import ConfigError, DataError


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value % 256, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def make_pool(root: Path, sizes, bad: dict | None = None) -> list[str]:
    """Shards `train-NNNNNN.tar` of `sizes` samples + manifest; `bad` = {key: png bytes} overrides."""
    root.mkdir(parents=True, exist_ok=True)
    keys, entries = [], []
    for s, n in enumerate(sizes):
        samples = []
        for _ in range(n):
            key = f"k{len(keys):04d}"
            png = (bad or {}).get(key, _png(len(keys)))
            samples.append((key, {"png": png, "json": json.dumps({"label": str(len(keys) % 3)}).encode()}))
            keys.append(key)
        write_shard(root / f"train-{s:06d}.tar", samples)
        entries.append({"url": f"train-{s:06d}.tar", "n": n})
    (root / "manifest.json").write_text(json.dumps({"shards": {"train": entries}, "counts": {}}))
    return keys


def keys_collate(samples):
    """Collate to the list of keys."""
    return [meta["__key__"] for _, meta in samples]


def _loader(root, **kw):
    args = {"batch_size": 4, "seed": 3, "window_shards": 2, "collate_fn": keys_collate, **kw}
    return make_data_loader(str(root), **args)


def _flat(batches):
    return [k for b in batches for k in b]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    return root, make_pool(root, [5, 8, 3, 9, 6, 7])  # 38 samples


def test_ranks_partition_the_epoch(pool):
    root, keys = pool
    loaders = [_loader(root, rank=r, world_size=3) for r in range(3)]
    seqs = [_flat(ld) for ld in loaders]
    assert [len(s) for s in seqs] == [12, 12, 12] and [len(ld) for ld in loaders] == [3, 3, 3]
    union = sum(seqs, [])
    assert len(set(union)) == len(union) == 36 and loaders[0].dropped_per_epoch == 2
    assert all(ld.epoch == 1 for ld in loaders)
    trimmed = _loader(root, rank=0, world_size=3, batch_size=5, drop_last=True)
    assert [len(b) for b in trimmed] == [5, 5] and len(trimmed) == 2


def test_order_is_seeded_and_changes_per_epoch(pool):
    root, keys = pool
    ld = _loader(root)
    e0, e1 = _flat(ld), _flat(ld)
    assert sorted(e0) == sorted(e1) == sorted(keys) and e0 != e1
    assert _flat(_loader(root)) == e0 and _flat(_loader(root, seed=4)) != e0
    assert _flat(_loader(root, shuffle=False)) == keys


def test_workers_do_not_change_the_order_and_resume_counts_consumed(pool):
    root, _ = pool
    ref = list(_loader(root, rank=1, world_size=2))
    ld = _loader(root, rank=1, world_size=2, num_workers=2)
    it = iter(ld)
    first = [next(it) for _ in range(2)]  # the workers have prefetched more than this
    state = ld.state_dict()
    del it
    assert state["position"] == 8 and state["epoch"] == 0 and state["world_size"] == 2
    fresh = _loader(root, rank=1, world_size=2, batch_size=3)
    fresh.load_state_dict(json.loads(json.dumps(state)))
    assert _flat(first) + _flat(fresh) == _flat(ref) and fresh.epoch == 1
    assert list(_loader(root, rank=1, world_size=2, num_workers=2)) == ref
    with pytest.raises(ConfigError, match="world_size"):
        _loader(root, world_size=1).load_state_dict(state)


def test_state_at_epoch_end_moves_to_next_epoch(pool):
    root, _ = pool
    ld = _loader(root, batch_size=10)
    it = ld.infinite()
    batches = [next(it) for _ in range(4)]  # exactly epoch 0
    assert ld.state_dict()["position"] == 38 and ld.epoch == 0
    assert sorted(_flat(batches)) == sorted(pool[1])
    nxt, ref = _loader(root, batch_size=10), _loader(root, batch_size=10)
    nxt.load_state_dict(ld.state_dict())
    ref.set_epoch(1)
    assert _flat(nxt) == _flat(ref) == _flat([next(it) for _ in range(4)]) and nxt.epoch == 2


def test_seeded_transform_is_reproducible_across_workers(pool):
    root, _ = pool

    def draw(image, generator):
        return int(generator.integers(1 << 30))

    def collate(samples):
        return [(img, meta["__key__"]) for img, meta in samples]

    def masks(samples, generator=None):
        return [int(generator.integers(1 << 30))] * len(samples)

    a = list(_loader(root, transform=draw, collate_fn=collate))
    b = list(_loader(root, transform=draw, collate_fn=collate, num_workers=2))
    assert a == b and len({v for batch in a for v, _ in batch}) == 38
    c = list(_loader(root, collate_fn=masks))
    assert c == list(_loader(root, collate_fn=masks, num_workers=2)) and len({b[0] for b in c}) == len(c)


def test_pipe_urls_read_like_files(pool):
    root, _ = pool
    spec = [(f"pipe:cat {root}/train-{i:06d}.tar", n) for i, n in enumerate([5, 8, 3, 9, 6, 7])]
    got = _flat(make_data_loader(spec, batch_size=4, seed=3, window_shards=2, collate_fn=keys_collate))
    files = [(str(root / f"train-{i:06d}.tar"), n) for i, n in enumerate([5, 8, 3, 9, 6, 7])]
    assert got == _flat(make_data_loader(files, batch_size=4, seed=3, window_shards=2, collate_fn=keys_collate))


def test_bad_samples_are_counted_skipped_or_fatal(tmp_path, caplog):
    root = tmp_path / "bad"
    keys = make_pool(root, [6, 6, 6], bad={"k0002": b"\x89PNG\r\n\x1a\n garbage"})
    shard = root / "train-000001.tar"
    with tarfile.open(shard) as tar:
        cut = [m for m in tar.getmembers() if m.name == "k0009.png"][0].offset_data + 10
    shard.write_bytes(shard.read_bytes()[:cut])  # truncated inside k0009.png: k0009..k0011 are lost
    ld = _loader(root, num_workers=2)
    seen = _flat(ld)
    assert sorted(seen) == sorted(set(keys) - {"k0002", "k0009", "k0010", "k0011"})
    assert len(ld) == 5 and ld.skipped["corrupt_sample"] == 1
    assert ld.skipped["shard_error"] + ld.skipped["missing_sample"] == 3
    assert ld.state_dict()["skipped"] == dict(ld.skipped)
    with caplog.at_level("WARNING", logger="dinov3_us"):
        assert sorted(_flat(_loader(root))) == sorted(seen)
    assert "skipping a sample (corrupt_sample)" in caplog.text and "k0002" in caplog.text
    with pytest.raises(DataError, match="strict"):
        list(_loader(root, strict=True))


def test_plan_is_a_permutation_within_windows():
    plan = ShufflePlan([3, 4, 5, 6], seed=1, window_shards=2)
    shard, index, window = plan.global_order(0)
    pairs = set(zip(shard.tolist(), index.tolist(), strict=True))
    assert len(pairs) == 18 and all(0 <= i < [3, 4, 5, 6][s] for s, i in pairs)
    assert (np.diff(window) >= 0).all()  # windows are read one after another
    with pytest.raises(DataError):
        ShufflePlan([1], seed=0).rank_plan(0, 0, 2)
