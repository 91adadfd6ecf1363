"""Dataset specs -> lists of `Shard`s (url + sample count), and `train.dataset_path` -> specs.

A *spec* names a set of shards, each with its sample count `n` (the loaders need every count up front
to compute an epoch's order, see `dinov3_us.data.streaming`):

- `DIR` or `DIR:split1,split2`: a curated folder with `manifest.json` (all its splits, in manifest
  order, by default); shard urls in the manifest may be relative to `DIR` or absolute;
- `a/train-{000000..000003}.tar` (brace-expanded; `{a,b}` alternatives too): local tar files; `n` is
  taken from a `manifest.json` beside them that lists the file, else counted by reading the headers;
- `pipe:COMMAND` (brace-expanded): a command writing a tar to stdout (e.g. `pipe:curl -s URL`); `n`
  is counted by streaming it once, so prefer a manifest for remote data;
- a list of any of these, of `Shard`s, of `(url, n)` pairs or of `{"url", "n"}` dicts.

`resolve_shards` checks that every local shard it returns is a plausible tar file (`check_shards`);
remote ones are read as they come.

`train.dataset_path` holds one or several specs separated by `;` (one per pool, see `data.pool_weights`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import tarfile
from pathlib import Path

from dinov3_us.data.shards.layout import MANIFEST
from dinov3_us.data.shards.manifest import Shard, is_remote, manifest_shards, shard_entry
from dinov3_us.data.shards.reader import count_samples
from dinov3_us.errors import DataError

logger = logging.getLogger("dinov3_us")

# The smallest possible tar: its end-of-archive marker, two zero blocks (our writer pads to 10 KiB).
_TAR_MIN_BYTES = 2 * tarfile.BLOCKSIZE


def split_specs(dataset_path: str) -> list[str]:
    """The specs of a `train.dataset_path`-style string: split on `;`, stripped, empty parts dropped.

    `"a:train; b"` -> `["a:train", "b"]`; an empty or blank string gives `[]` (callers say what is missing).
    """
    return [p.strip() for p in dataset_path.split(";") if p.strip()]


def expand_braces(pattern: str) -> list[str]:
    """Expand `{000..003}` ranges (zero padding kept) and `{a,b}` alternatives, left to right."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if hi < lo:
            raise DataError(f"{pattern}: brace range {{{body}}} is empty (end < start)")
        values = [str(i).zfill(len(rng.group(1))) for i in range(lo, hi + 1)]
    elif "," in body:
        values = body.split(",")
    else:
        raise DataError(f"{pattern}: expected {{START..END}} or {{a,b,...}} in braces, got {{{body}}}")
    return [head + v + rest for v in values for rest in expand_braces(tail)]


def parse_dir_spec(spec: str) -> tuple[str, list[str] | None] | None:
    """`DIR` -> (DIR, None), `DIR:a,b` -> (DIR, ["a", "b"]) when DIR is a folder, else None."""
    if os.path.isdir(spec):
        return spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and head and os.path.isdir(head):
        splits = [s.strip() for s in tail.split(",") if s.strip()]
        if not splits:
            raise DataError(f"{spec}: expected DIR:split1,split2 with at least one split name")
        return head, splits
    return None


def _count_from_sibling_manifest(path: str) -> int | None:
    folder = Path(path).parent
    if not (folder / MANIFEST).is_file():
        return None
    with contextlib.suppress(DataError):
        for shard in manifest_shards(folder):
            if os.path.abspath(shard.url) == os.path.abspath(path):
                return shard.n
    return None


def resolve_shards(spec) -> list[Shard]:
    """Resolve a dataset spec (see the module docstring) into its list of `Shard`s.

    Every local shard is checked to exist (`check_shards`), so a manifest listing a deleted shard
    fails here, before training starts, not when the loader reaches it.
    """
    shards = _resolve(spec)
    check_shards(shards)
    return shards


def check_shards(shards: list[Shard], show: int = 3) -> None:
    """Raise one `DataError` unless every local shard is a non-empty file of at least a tar's end marker.

    `pipe:` and `scheme://` urls are not checked (they can only be known by reading them). The error
    names the first `show` bad files and how many there are, out of how many local shards.
    """
    local = [s.url.removeprefix("file:") for s in shards if not is_remote(s.url.removeprefix("file:"))]
    bad = []
    for path in dict.fromkeys(local):
        try:
            info = os.stat(path)
        except OSError:
            bad.append(f"{path} (missing)")
            continue
        if not stat.S_ISREG(info.st_mode):
            bad.append(f"{path} (not a file)")
        elif info.st_size < _TAR_MIN_BYTES:
            bad.append(f"{path} ({info.st_size} bytes)")
    if bad:
        more = f" and {len(bad) - show} more" if len(bad) > show else ""
        raise DataError(
            f"{len(bad)} of {len(set(local))} local shard files are missing or too short to be a tar: "
            f"{', '.join(bad[:show])}{more} (re-run tools/build_dataset.py or fix the manifest that lists them)"
        )


def _resolve(spec) -> list[Shard]:
    """`resolve_shards` without the existence check (it runs once, on the whole list)."""
    if isinstance(spec, Shard):
        return [spec]
    if isinstance(spec, (list, tuple)):
        if len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], int):
            return [Shard(spec[0], spec[1])]
        out = []
        for item in spec:
            out += [shard_entry(Path("."), item, "shard list")] if isinstance(item, dict) else _resolve(item)
        return out
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str) or not spec:
        raise DataError(f"dataset spec: expected a folder, URL pattern or list of shards, got {spec!r}")
    if not spec.startswith("pipe:"):
        parsed = parse_dir_spec(spec)
        if parsed is not None:
            return manifest_shards(*parsed)
    shards = []
    for url in expand_braces(spec):
        if not url.startswith("pipe:"):
            url = url.removeprefix("file:")
            if not os.path.isfile(url):
                raise DataError(f"{url}: no such shard file (spec {spec!r}; a folder needs {MANIFEST})")
            n = _count_from_sibling_manifest(url)
        else:
            n = None
        if n is None:
            logger.info("counting the samples of %s by reading it (a manifest.json avoids this)", url)
            n = count_samples(url)
        shards.append(Shard(url, n))
    return shards
