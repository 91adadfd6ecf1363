"""Writing curated data: deterministic webdataset shards, atomic JSON files, and the resume journal.

Shards are plain tar files in webdataset layout (`KEY.png`, `KEY.json`, `KEY.mask.png`) with every
varying header field fixed (mtime 0, uid/gid 0, mode 0644), so the same samples give the same bytes.
A shard is written as `NAME.tmp` and renamed when complete: a file named `{split}-NNNNNN.tar` is
always whole. The journal (`.build_journal.jsonl`) gets one line per finished shard, so an
interrupted build restarts after the last finished shard.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from dinov3_us.data.curation.records import Sample
from dinov3_us.errors import DataError
from dinov3_us.fileio import append_durable, fsync_dir, write_atomic

JOURNAL = ".build_journal.jsonl"


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`."""
    return f"{split}-{index:06d}.tar"


def dump_json(obj) -> bytes:
    """Canonical JSON bytes (sorted keys, ASCII) so equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()


class ShardWriter:
    """One tar shard being filled; `close()` renames it into place and returns its file name."""

    def __init__(self, out_dir: Path, split: str, index: int):
        self.name = shard_name(split, index)
        self.path = Path(out_dir) / self.name
        self.tmp = self.path.with_name(self.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.n = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, sample: Sample) -> None:
        """Append one sample: `KEY.png`, `KEY.json` and, when present, `KEY.mask.png`."""
        self._add(f"{sample.key}.png", sample.image_png)
        self._add(f"{sample.key}.json", dump_json(sample.meta))
        if sample.mask_png is not None:
            self._add(f"{sample.key}.mask.png", sample.mask_png)
        self.n += 1

    def abort(self) -> None:
        """Drop the unfinished shard (after an error): close and delete its temporary file."""
        self._tar.close()
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def close(self) -> str:
        """Finish the tar, fsync and rename it to its final name."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.name


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
