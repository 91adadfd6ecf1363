"""Map-style reader of labelled shards: right label per key, len = manifest, random access, exact epochs."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3_us.data.map_dataset import ShardMapDataset, rank_indices
from dinov3_us.data.shards import write_shard
from dinov3_us.errors import DataError

LABELS = ["TC", "TT", "TV"]


def _png(value, size=(8, 6)):
    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """val: 2 shards (11 samples, masks on even keys); test: 1 shard holding only TT and TV."""
    root = tmp_path_factory.mktemp("eval")
    truth, shards, counts, i = {}, {}, {}, 0
    for split, sizes in (("val", [6, 5]), ("test", [4])):
        shards[split], counts[split] = [], {}
        for s, n in enumerate(sizes):
            samples = []
            for _ in range(n):
                key = f"fpdb_{i:04d}"
                label = LABELS[(i * 7) % 3] if split == "val" else LABELS[1 + i % 2]
                members = {"png": _png(i), "json": json.dumps({"label": label, "split": split, "i": i}).encode()}
                if i % 2 == 0:
                    members["mask.png"] = _png(255 - i)
                samples.append((key, members))
                truth[key], counts[split][label] = label, counts[split].get(label, 0) + 1
                i += 1
            write_shard(root / f"{split}-{s:06d}.tar", samples)
            shards[split].append({"url": f"{split}-{s:06d}.tar", "n": n})
    (root / "manifest.json").write_text(json.dumps({"source": "t", "task": "t", "counts": counts, "shards": shards}))
    return root, truth, counts


def test_labels_len_and_random_access(curated):
    root, truth, counts = curated
    ds = ShardMapDataset(f"{root}:val")
    assert len(ds) == sum(counts["val"].values()) == 11
    assert ds.classes == LABELS
    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    for i in order + [-1]:
        image, target, meta = ds[i]
        assert ds.classes[target] == truth[meta["__key__"]] == meta["label"]
        assert image.mode == "L" and image.size == (8, 6) and image.getpixel((0, 0)) == meta["i"]
    assert sorted(ds.targets.tolist()) == sorted(LABELS.index(truth[f"fpdb_{i:04d}"]) for i in range(11))
    with pytest.raises(IndexError):
        ds[11]


def test_classes_come_from_every_split_and_masks(curated):
    root, truth, _ = curated
    ds = ShardMapDataset(f"{root}:test", decode="numpy", with_mask=True)
    assert ds.classes == LABELS and set(ds.targets.tolist()) == {1, 2}  # TC absent from test, index kept
    image, target, meta = ds[0]
    assert isinstance(image, np.ndarray) and image.shape == (6, 8) and image[0, 0] == 11
    assert meta["mask"] is None and ds[1][2]["mask"][0, 0] == 255 - 12


def test_manifest_label_order_is_kept(curated, tmp_path):
    root, _, _ = curated
    copy = tmp_path / "copy"
    copy.mkdir()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["labels"] = ["TT", "TV", "TC"]
    for split in manifest["shards"].values():
        for entry in split:
            entry["url"] = str(root / entry["url"])  # absolute urls
    (copy / "manifest.json").write_text(json.dumps(manifest))
    ds = ShardMapDataset(f"{copy}:val")
    assert ds.classes == ["TT", "TV", "TC"] and all(ds.classes[t] == m["label"] for _, t, m in ds)


def test_exact_epoch_with_workers_and_ranks(curated):
    root, truth, _ = curated
    ds = ShardMapDataset(str(root), transform=lambda im: torch.tensor(np.asarray(im)[0, 0].item()))
    seen = []
    for rank in range(3):
        part = torch.utils.data.Subset(ds, rank_indices(len(ds), rank, 3))
        loader = torch.utils.data.DataLoader(part, batch_size=2, num_workers=2, collate_fn=list)
        seen += [meta["__key__"] for batch in loader for _, _, meta in batch]
    assert sorted(seen) == sorted(truth) and len(seen) == len(ds) == 15


def test_mismatched_or_unreadable_shards_are_errors(curated, tmp_path):
    root, _, _ = curated
    data = (root / "val-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.tar: cannot index"):
        ShardMapDataset([(str(tmp_path / "cut.tar"), 6)])
    with pytest.raises(DataError, match="holds 6 samples, its manifest says 7"):
        ShardMapDataset([(str(root / "val-000000.tar"), 7)])
    with pytest.raises(DataError, match="seekable"):
        ShardMapDataset([(f"pipe:cat {root}/val-000000.tar", 6)])
    with pytest.raises(DataError, match="not in classes"):
        ShardMapDataset(f"{root}:val", classes=["TT"])
    assert list(rank_indices(10, 2, 3)) == [6, 7, 8, 9]
