"""Helpers shared by the curation tests: read a curated folder back with webdataset."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from dinov3_us.data.curation import BuildConfig, build_dataset

FAST = {"resize": 96, "png_compression": 1, "progress": False}


def build(out: Path, **kwargs) -> dict:
    """`build_dataset` with small, fast defaults for tests."""
    return build_dataset(BuildConfig(out=out, **{**FAST, **kwargs}))


def read_samples(out: Path) -> dict[str, list[dict]]:
    """{split: [sample dicts with decoded 'meta']} read through webdataset from the manifest's shards."""
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    samples = {}
    for split, shards in manifest["shards"].items():
        urls = [str(Path(out) / s["url"]) for s in shards]
        items = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False)) if urls else []
        for item in items:
            item["meta"] = json.loads(item["json"])
        samples[split] = items
    return samples


def decode(png: bytes) -> np.ndarray:
    """PNG bytes -> numpy array."""
    return np.asarray(Image.open(io.BytesIO(png)))


def digest(out: Path) -> dict[str, str]:
    """sha1 of every shard file in a curated folder."""
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(Path(out).glob("*.tar"))}


def check_consistent(out: Path) -> dict[str, list[dict]]:
    """Assert the shards hold exactly the manifest's counts and that no group spans two splits."""
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    samples = read_samples(out)
    groups: dict[str, set] = {}
    for split, items in samples.items():
        counts: dict[str, int] = {}
        for item in items:
            label = "null" if item["meta"]["label"] is None else item["meta"]["label"]
            counts[label] = counts.get(label, 0) + 1
            assert item["meta"]["split"] == split
            assert item["__key__"] == item["meta"]["key"]
            if item["meta"]["group"] is not None:
                groups.setdefault(item["meta"]["group"], set()).add(split)
        assert counts == manifest["counts"][split], split
        shard_sizes = [s["n"] for s in manifest["shards"][split]]
        assert shard_sizes and sum(shard_sizes) == len(items)
    assert all(len(s) == 1 for s in groups.values()), {g: s for g, s in groups.items() if len(s) > 1}
    return samples
