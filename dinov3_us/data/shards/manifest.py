"""`manifest.json`: reading, validating and writing the table of a curated folder's shards.

Schema (what loaders rely on; `dinov3_us.data.curation.outputs` writes the rest)::

    {"shards": {"train": [{"url": "train-000000.tar", "n": 1000}, ...], "val": [...]},   # required
     "labels": [...], "counts": {split: {label: n}}, "num_samples": ..., "fingerprint": "...", ...}

`url` is relative to the folder (as written by `tools/build_dataset.py`), absolute, or remote
(`pipe:...`, `scheme://...`); `n` is the shard's sample count, an int >= 0.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dinov3_us.data.shards.layout import MANIFEST
from dinov3_us.errors import DataError
from dinov3_us.fileio import write_json_atomic


@dataclass(frozen=True)
class Shard:
    """One tar shard: where to read it and how many samples it holds."""

    url: str
    n: int


def _check_table(manifest, where: str) -> dict:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), dict):
        raise DataError(f"{where}: expected a JSON object with a 'shards' mapping {{split: [{{url, n}}, ...]}}")
    return manifest


def load_manifest(folder: str | Path) -> dict:
    """The parsed `manifest.json` of a curated folder (DataError naming the file when absent/invalid)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder}: no {MANIFEST} in this folder (expected the output of tools/build_dataset.py)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest ({e})") from None
    return _check_table(manifest, str(path))


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    """Validate `manifest` (its `shards` table) and write it atomically as `folder/manifest.json` (sorted keys)."""
    path = Path(folder) / MANIFEST
    _check_table(manifest, str(path))
    for split, items in manifest["shards"].items():
        if not isinstance(items, list):
            raise DataError(f"{path} split {split!r}: expected a list of {{'url', 'n'}}, got {items!r}")
        for item in items:
            shard_entry(Path(folder), item, f"{path} split {split!r}")
    return write_json_atomic(path, manifest, sort_keys=True)


def is_remote(url: str) -> bool:
    """Whether `url` is a `pipe:` command or a `scheme://` URL (not a local path)."""
    return url.startswith("pipe:") or re.match(r"^[a-z][a-z0-9+.-]*://", url) is not None


def shard_entry(folder: Path, item, where: str) -> Shard:
    """One `{"url", "n"}` manifest entry -> `Shard` (a relative local url resolved against `folder`)."""
    if not isinstance(item, dict) or "url" not in item or not isinstance(item.get("n"), int) or item["n"] < 0:
        raise DataError(f"{where}: expected {{'url': ..., 'n': int >= 0}}, got {item!r}")
    url = str(item["url"])
    if not is_remote(url) and not os.path.isabs(url):
        url = str(folder / url)
    return Shard(url, item["n"])


def manifest_shards(folder: str | Path, splits: Iterable[str] | None = None) -> list[Shard]:
    """Shards of `splits` (default: all, in manifest order) of a curated folder."""
    folder = Path(folder)
    table = load_manifest(folder)["shards"]
    names = list(table) if splits is None else list(splits)
    out = []
    for split in names:
        if split not in table:
            raise DataError(f"{folder / MANIFEST}: no split {split!r}; available: {', '.join(table) or 'none'}")
        out += [shard_entry(folder, item, f"{folder / MANIFEST} split {split!r}") for item in table[split]]
    return out
