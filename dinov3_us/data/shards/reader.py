"""Reading samples out of one tar shard: by position, skipping unwanted members unread.

A sample is a run of consecutive members sharing a key (`dinov3_us.data.shards.layout.split_key`);
its *position* is its index in the shard. Readers ask for positions (`read_samples`: the streaming
loader's resume and per-worker shares) or walk every sample (`iter_samples`: merging, counting).
A seekable local tar skips the members of unwanted samples without reading their bytes; the
end-of-archive marker is checked after a full pass, so a shard cut at a member boundary is reported
as truncated instead of read as a shorter valid tar.
"""

from __future__ import annotations

import contextlib
import subprocess
import tarfile
from collections.abc import Collection, Iterator

from dinov3_us.data.shards.layout import split_key
from dinov3_us.errors import DataError

# What a damaged or missing shard raises while it is read.
READ_ERRORS = (OSError, tarfile.TarError, EOFError)


@contextlib.contextmanager
def open_tar(url: str):
    """Open a shard for reading: a local file (seekable, members skipped without reading) or `pipe:CMD`."""
    if not url.startswith("pipe:"):
        with tarfile.open(url.removeprefix("file:"), mode="r:") as tar:
            yield tar
        return
    proc = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            yield tar
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.wait()


def check_end(tar: tarfile.TarFile) -> None:
    """After iterating a seekable tar to its end: raise ReadError unless the end-of-archive marker is there.

    tarfile stops silently at a file cut between members; the marker (two zero blocks) tells a whole
    shard from a truncated one, whose last sample may lack members.
    """
    fileobj = tar.fileobj
    if not hasattr(fileobj, "seekable") or not fileobj.seekable():
        return
    fileobj.seek(tar.offset)
    if fileobj.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
        raise tarfile.ReadError(f"no end-of-archive marker at offset {tar.offset}: truncated tar")


def iter_members(tar: tarfile.TarFile) -> Iterator[tuple[int, str, str, tarfile.TarInfo]]:
    """(position, key, extension, header) of every file member of an open tar, in order."""
    idx, key = -1, None
    for info in tar:
        if not info.isfile():
            continue
        k, ext = split_key(info.name)
        if k != key:
            idx, key = idx + 1, k
        yield idx, k, ext, info


def iter_samples(url: str, wanted: Collection[int] | None = None) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """(position, key, {ext: bytes}) of the samples of shard `url` at positions `wanted` (None: all), in order.

    One forward pass; members of unwanted samples are not read, and reading stops after the last
    wanted sample. A sample is yielded once it is complete, so on damage (missing file, truncated
    tar, bad header: an `OSError` / `tarfile.TarError` / `EOFError` is raised) the samples before it
    have been yielded and the one being read is dropped.
    """
    if wanted is not None:
        wanted = set(wanted)
        if not wanted:
            return
    last = None if wanted is None else max(wanted)
    current: tuple[int, str, dict] | None = None
    with open_tar(url) as tar:
        for idx, key, ext, info in iter_members(tar):
            if current is not None and idx != current[0]:
                yield current
                current = None
            if last is not None and idx > last:
                return
            if wanted is None or idx in wanted:
                if current is None:
                    current = (idx, key, {})
                current[2][ext] = tar.extractfile(info).read()
        check_end(tar)
    if current is not None:
        yield current


def count_samples(url: str) -> int:
    """Number of samples (key groups) in one shard, reading only member headers where possible."""
    try:
        with open_tar(url) as tar:
            n = 0
            for idx, _, _, _ in iter_members(tar):
                n = idx + 1
    except READ_ERRORS as e:
        raise DataError(f"{url}: cannot read this shard ({type(e).__name__}: {e})") from None
    return n


def read_samples(url: str, wanted: Collection[int]) -> tuple[dict[int, tuple[str, dict]], str | None]:
    """Read the samples at positions `wanted` of one shard in a single forward pass.

    Returns `({position: (key, {ext: bytes})}, error)`: `error` describes why the shard ended early
    (missing file, truncated tar, bad header) or is None; samples found before the error are kept,
    the one being read when it happened is dropped. Reading stops after the last wanted sample.
    """
    found: dict[int, tuple[str, dict]] = {}
    try:
        for idx, key, members in iter_samples(url, wanted):
            found[idx] = (key, members)
    except READ_ERRORS as e:
        return found, f"{type(e).__name__}: {e}"
    return found, None
