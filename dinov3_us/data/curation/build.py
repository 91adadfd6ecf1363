"""`build_dataset`: one source -> webdataset shards + manifest, resumable and byte-reproducible.

Steps: the source reader plans the records (splits assigned, CSV-level problems counted); the
patient/subject disjointness of the splits is checked; records are ordered (split, then key) and
processed (in a worker pool when `workers > 1`, results kept in order); near-duplicates are dropped
against everything kept before (and against `dedup_against` builds); samples fill shards of
`shard_size`. Each finished shard is journaled; an interrupted build re-run with the same arguments
continues after the last finished shard and produces the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from functools import partial

from tqdm import tqdm

from dinov3_us.data.curation.dedup import HashIndex, load_hashes
from dinov3_us.data.curation.options import BuildConfig
from dinov3_us.data.curation.outputs import assemble_manifest, prepare_out, split_rank, write_outputs
from dinov3_us.data.curation.preprocess import process_record
from dinov3_us.data.curation.records import Record, Skip, SkipLog, dedupe_keys, natural_key
from dinov3_us.data.curation.sources import get_source
from dinov3_us.data.curation.splits import check_disjoint
from dinov3_us.data.curation.writer import Journal, dump_json, open_shard, write_sample

logger = logging.getLogger("dinov3_us")


def order_records(records: list[Record], limit: int | None = None) -> list[Record]:
    """Records in processing order (split rank, then natural key order); at most `limit` per split."""
    by_split: dict[str, list[Record]] = {}
    for r in records:
        by_split.setdefault(r.split, []).append(r)
    ordered = []
    for split in sorted(by_split, key=split_rank):
        ordered += sorted(by_split[split], key=lambda r: natural_key(r.key))[:limit]
    return ordered


class _Shard:
    """The shard being filled plus what its journal entry will say."""

    def __init__(self, out, split, index):
        self.split, self.index, self.writer = split, index, None
        self.out, self.counts, self.skips, self.dups, self.hashes = out, {}, [], [], {}

    def add(self, sample) -> None:
        if self.writer is None:
            self.writer = open_shard(self.out, self.split, self.index)
        write_sample(self.writer, sample)
        label = "null" if sample.meta["label"] is None else str(sample.meta["label"])
        self.counts[label] = self.counts.get(label, 0) + 1
        self.hashes[sample.key] = f"{sample.phash:016x}"

    def entry(self, end: int) -> dict:
        name = self.writer.close() if self.writer is not None else None
        n = sum(self.counts.values())
        return {"split": self.split, "shard": name, "n": n, "end": end, "counts": self.counts,
                "skips": self.skips, "dups": self.dups, "hashes": self.hashes}


def build_dataset(cfg: BuildConfig) -> dict:
    """Curate `cfg.source` into `cfg.out` and return the manifest (see `outputs` for its layout)."""
    source = get_source(cfg.source)
    skips = SkipLog(cfg.strict)
    plan = source.read(cfg, skips)
    prep, dedup = cfg.resolve(source.PREP_DEFAULTS)
    dedupe_keys(plan.records)
    for r in plan.records:  # group ids are unique across sources, so pools keep patients apart too
        r.group = None if r.group is None else f"{cfg.name or cfg.source}/{r.group}"
    check_disjoint(plan.records)
    ordered = order_records(plan.records, cfg.limit)
    settings = {**cfg.output_fields(), "prep": prep.as_dict(), "dedup": dedup}
    fingerprint = hashlib.sha1(dump_json(settings)).hexdigest()
    prepare_out(cfg.out, fingerprint, cfg.overwrite)
    journal = Journal(cfg.out, fingerprint)
    entries = journal.load()
    skips.extend([s for e in entries for s in e["skips"]])
    if not entries:
        journal.start()
    else:
        logger.info("resuming %s after %d finished shard(s)", cfg.out, sum(e["shard"] is not None for e in entries))

    index = HashIndex(cfg.dedup_threshold)
    for other in cfg.dedup_against if dedup else []:
        for key, h in load_hashes(other).items():
            index.add(f"{other.name}:{key}", h)
    for e in entries:
        for key, h in e["hashes"].items():
            index.add(key, int(h, 16))
    pos = entries[-1]["end"] if entries else 0
    next_index = {}
    for e in entries:
        next_index[e["split"]] = next_index.get(e["split"], 0) + (e["shard"] is not None)

    work = partial(process_record, prep=prep)
    pool = multiprocessing.Pool(cfg.workers) if cfg.workers > 1 and len(ordered) - pos > 1 else None
    results = pool.imap(work, ordered[pos:], chunksize=4) if pool else map(work, ordered[pos:])
    desc = f"{cfg.source} -> {cfg.out.name}"
    bar = tqdm(total=len(ordered), initial=pos, unit="img", desc=desc, disable=not cfg.progress)
    shard = None
    try:
        for i, result in enumerate(results, start=pos):
            split = ordered[i].split
            if shard is not None and (shard.split != split or sum(shard.counts.values()) >= cfg.shard_size):
                entries.append(shard.entry(i))
                journal.append(entries[-1])
                next_index[shard.split] = next_index.get(shard.split, 0) + (entries[-1]["shard"] is not None)
                shard = None
            if shard is None:
                shard = _Shard(cfg.out, split, next_index.get(split, 0))
            bar.update(1)
            if isinstance(result, Skip):
                skips.add(result.reason, result.where, result.detail)
                shard.skips.append(skips.entries[-1])
                continue
            near = index.query(result.phash) if dedup else None
            if near is not None:
                skips.add("near_duplicate", result.meta["file"], f"of {near[0]} (distance {near[1]})")
                shard.skips.append(skips.entries[-1])
                shard.dups.append({"key": result.key, "duplicate_of": near[0], "distance": near[1]})
                continue
            index.add(result.key, result.phash)
            shard.add(result)
        if shard is not None:
            entries.append(shard.entry(len(ordered)))
            journal.append(entries[-1])
            shard = None
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        if shard is not None and shard.writer is not None:
            shard.writer.abort()  # interrupted: finished shards are journaled, this one is redone on resume

    splits = sorted({r.split for r in ordered}, key=split_rank)
    manifest = assemble_manifest(cfg, plan, prep, dedup, fingerprint, entries, skips, splits)
    manifest["members"] = {"image": "png", "metadata": "json"}
    if any(r.mask_path for r in ordered):
        manifest["members"]["mask"] = "mask.png"
    hashes = {k: int(h, 16) for e in entries for k, h in e["hashes"].items()}
    write_outputs(cfg.out, manifest, hashes, skips.entries)
    journal.remove()
    skips.summarize()
    logger.info("wrote %d samples in %d shard(s) to %s", manifest["num_samples"],
                sum(len(v) for v in manifest["shards"].values()), cfg.out)
    return manifest

