"""Writing a deterministic shard: `ShardWriter` (one tar, committed atomically) and `write_shard`.

Every varying tar header field is fixed (mtime 0, uid/gid 0, empty user/group names, mode 0644, PAX
format), so the same samples give the same bytes. The tar is written to a temporary file beside its
destination and renamed into place by `dinov3_us.fileio.atomic_path` (fsync of the file, rename,
fsync of the folder) when it is closed: a file named `{split}-NNNNNN.tar` is always whole.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from dinov3_us.fileio import atomic_path


class _Aborted(Exception):
    """Passed to the atomic write to make it drop the temporary file."""


class ShardWriter:
    """One tar shard being filled at `path`; `close()` renames it into place, `abort()` drops it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.name
        self._commit = atomic_path(self.path)
        self.tmp = self._commit.__enter__()
        self._file = open(self.tmp, "xb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.n = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, key: str, members: Mapping[str, bytes]) -> None:
        """Append one sample: a `KEY.EXT` member per item of `members`, in their order."""
        for ext, data in members.items():
            self._add(f"{key}.{ext}", data)
        self.n += 1

    def _finish_tar(self) -> None:
        self._tar.close()
        self._file.close()

    def abort(self) -> None:
        """Drop the unfinished shard (after an error): close and delete its temporary file."""
        self._finish_tar()
        error = _Aborted(str(self.path))
        self._commit.__exit__(_Aborted, error, None)

    def close(self) -> str:
        """Finish the tar, make it durable and rename it to its final name; returns that name."""
        self._finish_tar()
        self._commit.__exit__(None, None, None)
        return self.name


def write_shard(path: str | Path, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> int:
    """Write `(key, {ext: bytes})` samples as one shard at `path` (as `ShardWriter`); returns the sample count."""
    writer = ShardWriter(path)
    try:
        for key, members in samples:
            writer.write(key, members)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.n
