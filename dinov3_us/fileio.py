"""Atomic, durable file writes: the one way every stage writes a file that someone will read back.

Policy (one for the whole project): write a temporary file in the destination's folder, flush and
fsync it, rename it over the destination, then fsync the folder. A reader never sees half a file,
and after a crash the file is either the old one or the new one. Temporary files are created with
the process umask (not mkstemp's 0600), so a shared run folder stays readable by the group.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in folder `path` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file that another library wrote and closed (torch.save, safetensors) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside `path` (hidden, unique per process and call, ends in `.tmp`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new content to; on success it replaces `path` atomically.

    The parent folder is created. If the body raises, the temporary file is removed and `path` is left
    as it was. The body may write the file itself or hand the path to a library (`torch.save(x, tmp)`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (bytes, or text as UTF-8) to `path` atomically and durably."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(payload)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False, default=None) -> Path:
    """Write `obj` as indented JSON (and a final newline) atomically; `default` as in `json.dumps`."""
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=default) + "\n")


def append_durable(path: str | os.PathLike, data: bytes) -> None:
    """Append `data` to `path` and fsync it (a journal line that must survive a crash)."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
