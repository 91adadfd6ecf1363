"""Writing curated data: samples into shards, canonical JSON, and the resume journal.

The shard format (deterministic tar bytes, `{split}-NNNNNN.tar` names, atomic commit) is
`dinov3_us.data.shards`; a curated sample becomes the members `KEY.png`, `KEY.json` and, when it has
a mask, `KEY.mask.png`. The journal (`.build_journal.jsonl`) gets one line per finished shard, so an
interrupted build restarts after the last finished shard.
"""

from __future__ import annotations

import json
from pathlib import Path

from dinov3_us.data.curation.records import Sample
from dinov3_us.data.shards import ShardWriter, shard_name
from dinov3_us.errors import DataError
from dinov3_us.fileio import append_durable, write_atomic

JOURNAL = ".build_journal.jsonl"


def dump_json(obj) -> bytes:
    """Canonical JSON bytes (sorted keys, ASCII) so equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()


def open_shard(out_dir: Path, split: str, index: int) -> ShardWriter:
    """A `ShardWriter` for shard `index` of `split` in `out_dir`."""
    return ShardWriter(Path(out_dir) / shard_name(split, index))


def write_sample(writer: ShardWriter, sample: Sample) -> None:
    """Append one curated sample: `KEY.png`, `KEY.json` and, when present, `KEY.mask.png`."""
    members = {"png": sample.image_png, "json": dump_json(sample.meta)}
    if sample.mask_png is not None:
        members["mask.png"] = sample.mask_png
    writer.write(sample.key, members)


class Journal:
    """Append-only record of finished shards, keyed by the build's fingerprint."""

    def __init__(self, out_dir: Path, fingerprint: str):
        self.path = Path(out_dir) / JOURNAL
        self.fingerprint = fingerprint

    def load(self) -> list[dict]:
        """Entries of an unfinished build with the same fingerprint ([] when there is none).

        Raises:
            DataError: when the journal belongs to a build with other arguments.
        """
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except ValueError:
            header = {}
        if header.get("fingerprint") != self.fingerprint:
            raise DataError(
                f"{self.path}: an unfinished build with other arguments is in this folder; "
                "re-run it with its own arguments, pass --overwrite, or choose another --out"
            )
        entries = []
        for line in lines[1:]:
            try:
                entries.append(json.loads(line))
            except ValueError:
                break  # a line cut by the interruption: that shard is simply redone
        return entries

    def start(self) -> None:
        """Begin a fresh journal (header line only)."""
        write_atomic(self.path, dump_json({"fingerprint": self.fingerprint}) + b"\n")

    def append(self, entry: dict) -> None:
        """Durably append one finished-shard entry."""
        append_durable(self.path, dump_json(entry) + b"\n")

    def remove(self) -> None:
        """Delete the journal once the manifest is written."""
        self.path.unlink(missing_ok=True)
