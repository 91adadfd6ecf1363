"""The files around the shards: `manifest.json`, `hashes.json`, `skipped.tsv`, and cleaning an output folder.

`manifest.json` is what loaders read (file name, required `shards` table and its reading / writing:
`dinov3_us.data.shards.manifest`); a build writes::

    {"source": "fpdb", "task": "brain-planes", "labels": [...],
     "counts": {"train": {"Trans-thalamic": 700, ...}, "unlabelled": {"null": 335}},
     "shards": {"train": [{"url": "train-000000.tar", "n": 1000}, ...]},   # urls relative to the folder
     "skipped": {"missing_file": 2892, ...}, "duplicates": [{"key", "duplicate_of", "distance"}],
     "num_samples": ..., "split_policy": "...", "preprocess": {...}, "config": {...}, "fingerprint": "..."}
"""

from __future__ import annotations

from pathlib import Path

from dinov3_us.data.curation.dedup import to_hex
from dinov3_us.data.curation.options import FORMAT_VERSION
from dinov3_us.data.curation.writer import JOURNAL
from dinov3_us.data.shards import MANIFEST, is_shard_file, load_manifest, write_manifest
from dinov3_us.errors import DataError
from dinov3_us.fileio import ensure_writable_dir, write_atomic, write_json_atomic

HASHES = "hashes.json"
SKIPPED = "skipped.tsv"
SPLIT_ORDER = ("test", "val", "train", "unlabelled")


def split_rank(split: str) -> tuple:
    """Processing order of splits: test, val, train, unlabelled, then others alphabetically.

    Evaluation splits come first so that a near-duplicate of a test image is dropped from train,
    never from test.
    """
    return (SPLIT_ORDER.index(split), "") if split in SPLIT_ORDER else (len(SPLIT_ORDER), split)


def prepare_out(out: Path, fingerprint: str, overwrite: bool) -> None:
    """Create `out`; with `overwrite`, delete the files an earlier build wrote there (and only those).

    Raises:
        DataError: when `out` holds a finished dataset built with other arguments and `overwrite`
            is not set.
    """
    ensure_writable_dir(out, "--out")
    if overwrite:
        for path in out.iterdir():
            if path.is_file() and (is_shard_file(path.name) or path.name in (MANIFEST, HASHES, SKIPPED, JOURNAL)):
                path.unlink()
        return
    manifest = out / MANIFEST
    if manifest.is_file() and not (out / JOURNAL).is_file():
        try:
            previous = load_manifest(out).get("fingerprint")
        except DataError:
            previous = None
        if previous != fingerprint:
            raise DataError(
                f"{out}: holds a dataset built with other arguments (see its manifest.json); "
                "pass --overwrite to replace it or choose another --out"
            )


def count_table(entries: list[dict], splits: list[str]) -> tuple[dict, dict]:
    """(counts {split: {label: n}}, shards {split: [{url, n}]}) from the journal entries."""
    counts: dict = {s: {} for s in splits}
    shards: dict = {s: [] for s in splits}
    for e in entries:
        table = counts.setdefault(e["split"], {})
        for label, n in e["counts"].items():
            table[label] = table.get(label, 0) + n
        if e["shard"] is not None:
            shards.setdefault(e["split"], []).append({"url": e["shard"], "n": e["n"]})
    counts = {s: dict(sorted(t.items())) for s, t in counts.items()}
    return counts, shards


def write_outputs(out: Path, manifest: dict, hashes: dict[str, int], skipped: list[list[str]]) -> None:
    """Write hashes.json, skipped.tsv and, last, manifest.json (each atomically)."""
    write_json_atomic(out / HASHES, {k: to_hex(h) for k, h in sorted(hashes.items())}, sort_keys=True)
    lines = ["reason\tfile\tdetail"] + ["\t".join(str(c).replace("\t", " ") for c in e) for e in skipped]
    write_atomic(out / SKIPPED, ("\n".join(lines) + "\n").encode())
    write_manifest(out, manifest)


def assemble_manifest(cfg, plan, prep, dedup, fingerprint, entries, skips, splits) -> dict:
    """The manifest of one build from its config, source plan and journal entries."""
    counts, shards = count_table(entries, splits)
    return {
        "format_version": FORMAT_VERSION,
        "source": cfg.source,
        "name": cfg.name or cfg.source,
        "task": plan.task,
        "labels": plan.labels,
        "counts": counts,
        "num_samples": sum(sum(t.values()) for t in counts.values()),
        "shards": shards,
        "skipped": dict(sorted(skips.counts.items())),
        "duplicates": [d for e in entries for d in e["dups"]],
        "split_policy": plan.split_policy,
        "synthetic": bool(plan.extra.get("synthetic", False)),
        "source_info": plan.extra,
        "preprocess": {**prep.as_dict(), "dedup": dedup, "dedup_threshold": cfg.dedup_threshold},
        "config": cfg.output_fields(),
        "fingerprint": fingerprint,
    }
