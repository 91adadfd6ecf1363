"""Dataset specs -> lists of shards, and reading samples out of one webdataset tar shard.

A *spec* names a set of shards, each with its sample count `n` (the loaders need every count up front
to compute an epoch's order, see `dinov3_us.data.streaming`):

- `DIR` or `DIR:split1,split2`: a curated folder with `manifest.json` (all its splits, in manifest
  order, by default); shard urls in the manifest may be relative to `DIR` or absolute;
- `a/train-{000000..000003}.tar` (brace-expanded; `{a,b}` alternatives too): local tar files; `n` is
  taken from a `manifest.json` beside them that lists the file, else counted by reading the headers;
- `pipe:COMMAND` (brace-expanded): a command writing a tar to stdout (e.g. `pipe:curl -s URL`); `n`
  is counted by streaming it once, so prefer a manifest for remote data;
- a list of any of these, of `Shard`s, of `(url, n)` pairs or of `{"url", "n"}` dicts.

Tar reading uses stdlib `tarfile` rather than webdataset's pipeline because the loaders need sample
*positions* (the i-th key group of a shard) and the ability to skip unneeded members without
decoding them; samples are grouped by key exactly as webdataset does (`dir/key.ext1.ext2`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dinov3_us.errors import DataError

logger = logging.getLogger("dinov3_us")

MANIFEST = "manifest.json"
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


@dataclass(frozen=True)
class Shard:
    """One tar shard: where to read it and how many samples it holds."""

    url: str
    n: int


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


def split_key(name: str) -> tuple[str, str]:
    """Tar member name -> (sample key, extension), webdataset's rule: the key ends at the first dot."""
    m = _KEY_RE.match(name)
    return (m.group(1), m.group(2)) if m else (name, "")


def load_manifest(folder: str | Path) -> dict:
    """The parsed `manifest.json` of a curated folder (DataError naming the file when absent/invalid)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder}: no {MANIFEST} in this folder (expected the output of tools/build_dataset.py)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), dict):
        raise DataError(f"{path}: expected a JSON object with a 'shards' mapping {{split: [{{url, n}}, ...]}}")
    return manifest


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or re.match(r"^[a-z][a-z0-9+.-]*://", url) is not None


def _entry(folder: Path, item, where: str) -> Shard:
    if not isinstance(item, dict) or "url" not in item or not isinstance(item.get("n"), int) or item["n"] < 0:
        raise DataError(f"{where}: expected {{'url': ..., 'n': int >= 0}}, got {item!r}")
    url = str(item["url"])
    if not _is_remote(url) and not os.path.isabs(url):
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
        out += [_entry(folder, item, f"{folder / MANIFEST} split {split!r}") for item in table[split]]
    return out


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
    """Resolve a dataset spec (see the module docstring) into its list of `Shard`s."""
    if isinstance(spec, Shard):
        return [spec]
    if isinstance(spec, (list, tuple)):
        if len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], int):
            return [Shard(spec[0], spec[1])]
        out = []
        for item in spec:
            out += [_entry(Path("."), item, "shard list")] if isinstance(item, dict) else resolve_shards(item)
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


def write_shard(path: str | Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write `(key, {ext: bytes})` samples as a webdataset tar (fixed headers); returns the sample count.

    A minimal writer for tests, benchmarks and ad-hoc pools; `tools/build_dataset.py` is the full one.
    """
    n = 0
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n


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


def count_samples(url: str) -> int:
    """Number of samples (key groups) in one shard, reading only member headers where possible."""
    try:
        with open_tar(url) as tar:
            keys = [split_key(info.name)[0] for info in tar if info.isfile()]
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DataError(f"{url}: cannot read this shard ({type(e).__name__}: {e})") from None
    return sum(1 for i, k in enumerate(keys) if i == 0 or k != keys[i - 1])


def read_samples(url: str, wanted: Iterable[int]) -> tuple[dict[int, tuple[str, dict]], str | None]:
    """Read the samples at positions `wanted` of one shard in a single forward pass.

    Returns `({position: (key, {ext: bytes})}, error)`: `error` describes why the shard ended early
    (missing file, truncated tar, bad header) or is None; samples found before the error are kept,
    the one being read when it happened is dropped. Reading stops after the last wanted sample.
    """
    wanted = set(wanted)
    found: dict[int, tuple[str, dict]] = {}
    if not wanted:
        return found, None
    last, idx, key = max(wanted), -1, None
    try:
        with open_tar(url) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, ext = split_key(info.name)
                if k != key:
                    idx, key = idx + 1, k
                    if idx > last:
                        break
                if idx in wanted:
                    found.setdefault(idx, (k, {}))[1][ext] = tar.extractfile(info).read()
            else:
                check_end(tar)
    except (OSError, tarfile.TarError, EOFError) as e:
        found.pop(idx, None)
        return found, f"{type(e).__name__}: {e}"
    return found, None
