"""`merge_datasets`: several curated folders -> one pretraining pool, near-duplicates removed across sources.

Samples are copied unchanged (same PNG bytes and metadata), split by split (test, val, train,
unlabelled, ...), inputs in the order given. A sample whose pHash (from its json) lies within the
threshold of one kept before is dropped and reported, which removes images shared by two public
datasets. Damaged input shards (truncated, unreadable, missing) are counted under `skipped`, the
samples read before the damage kept; under `strict` they raise instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from dinov3_us.data.curation.dedup import HashIndex
from dinov3_us.data.curation.outputs import count_table, prepare_out, split_rank, write_outputs
from dinov3_us.data.curation.records import Sample, SkipLog
from dinov3_us.data.curation.writer import dump_json, open_shard, write_sample
from dinov3_us.data.shards import READ_ERRORS, iter_samples, load_manifest
from dinov3_us.errors import DataError


def iter_shard(path: Path, skips: SkipLog, expected: int | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of a tar shard; damage is counted in `skips` and ends the shard.

    The reading (key rule, end-of-archive check) is `dinov3_us.data.shards.iter_samples`: a shard cut
    inside a sample or at a member boundary is a `truncated_shard`, the samples before the cut are
    kept. With `expected` (the manifest's count) given, a whole tar with fewer samples also counts.
    """
    n = 0
    try:
        for _, key, members in iter_samples(str(path)):
            n += 1
            yield key, members
    except FileNotFoundError:
        skips.add("missing_shard", str(path))
        return
    except READ_ERRORS as exc:
        skips.add("truncated_shard", str(path), f"{type(exc).__name__}: {exc}; last partial sample dropped")
        return
    if expected is not None and n < expected:
        skips.add("truncated_shard", str(path), f"{n} of {expected} samples (cut at a member boundary)")


def merge_datasets(inputs: list[Path], out: Path, shard_size: int = 1000, dedup: bool = True, threshold: int = 4,
                   strict: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Merge curated folders `inputs` into `out` and return the pool's manifest."""
    inputs, out = [Path(p) for p in inputs], Path(out)
    if not inputs:
        raise DataError("--merge needs at least one curated folder")
    manifests = [load_manifest(p) for p in inputs]
    settings = {"inputs": [m.get("fingerprint") for m in manifests], "shard_size": shard_size, "dedup": dedup,
                "threshold": threshold}
    fingerprint = hashlib.sha1(dump_json(settings)).hexdigest()
    prepare_out(out, fingerprint, overwrite)
    skips, index, seen = SkipLog(strict), HashIndex(threshold), set()
    splits = sorted({s for m in manifests for s in m["shards"]}, key=split_rank)
    entries = []
    bar = tqdm(total=sum(m.get("num_samples", 0) for m in manifests), unit="img", desc="merge", disable=not progress)
    for split in splits:
        writer, counts, hashes, dups = None, {}, {}, []
        sources = [(p, m["shards"][split]) for p, m in zip(inputs, manifests) if split in m["shards"]]
        for folder, shards in sources:
            for shard in shards:
                for key, members in iter_shard(folder / shard["url"], skips, shard.get("n")):
                    bar.update(1)
                    if "png" not in members or "json" not in members:
                        skips.add("incomplete_sample", f"{folder / shard['url']}:{key}", f"members {sorted(members)}")
                        continue
                    if key in seen:
                        raise DataError(f"{folder}: sample key {key!r} also occurs in an earlier input; "
                                        "build the sources with distinct --name")
                    seen.add(key)
                    meta = json.loads(members["json"])
                    h = int(meta.get("phash", "0"), 16)
                    near = index.query(h) if dedup and "phash" in meta else None
                    if near is not None:
                        skips.add("near_duplicate", f"{folder.name}:{key}", f"of {near[0]} (distance {near[1]})")
                        dups.append({"key": key, "duplicate_of": near[0], "distance": near[1]})
                        continue
                    index.add(key, h)
                    if writer is None:
                        writer = open_shard(out, split, sum(e["split"] == split for e in entries))
                    write_sample(writer, Sample(key, members["png"], members.get("mask.png"), meta, h))
                    label = "null" if meta.get("label") is None else str(meta["label"])
                    counts[label] = counts.get(label, 0) + 1
                    hashes[key] = h
                    if writer.n >= shard_size:
                        entries.append(_entry(split, writer, counts, hashes, dups))
                        writer, counts, hashes, dups = None, {}, {}, []
        if writer is not None or dups:
            entries.append(_entry(split, writer, counts, hashes, dups))
    bar.close()
    shard_counts, shard_table = count_table(entries, splits)
    labels = []
    for m in manifests:
        labels += [lab for lab in m.get("labels", []) if lab not in labels]
    manifest = {
        "format_version": 1, "source": "merged", "name": out.name, "task": None, "labels": labels,
        "inputs": [{"path": str(p.resolve()), "source": m.get("source"), "name": m.get("name"), "task": m.get("task"),
                    "fingerprint": m.get("fingerprint"), "synthetic": m.get("synthetic", False)}
                   for p, m in zip(inputs, manifests)],
        "counts": shard_counts, "num_samples": sum(sum(t.values()) for t in shard_counts.values()),
        "shards": shard_table, "skipped": dict(sorted(skips.counts.items())),
        "duplicates": [d for e in entries for d in e["dups"]],
        "synthetic": any(m.get("synthetic", False) for m in manifests),
        "fingerprint": fingerprint,
    }
    all_hashes = {k: h for e in entries for k, h in e["hashes"].items()}
    write_outputs(out, manifest, all_hashes, skips.entries)
    skips.summarize()
    return manifest


def _entry(split, writer, counts, hashes, dups) -> dict:
    name = writer.close() if writer is not None else None
    n = sum(counts.values())
    return {"split": split, "shard": name, "n": n, "counts": counts, "hashes": hashes, "dups": dups}
