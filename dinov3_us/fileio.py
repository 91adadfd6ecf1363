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
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dinov3_us.errors import ConfigError


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


def ensure_writable_dir(path: str | os.PathLike, what: str, *, create: bool = True) -> Path:
    """Create folder `path` (with its parents) and check that a file can be written in it; return it.

    Every stage calls it before any work, so that a read-only file system, missing permissions or a
    file in the way is one line, not a traceback after minutes of work. With `create=False` (a launcher
    planning, a dry run) nothing is created: the nearest existing folder must allow writing.

    Raises:
        ConfigError: naming `what` (the option that gave the path, e.g. "--output-dir"), the path and why.
    """
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a folder")
    if not create:
        if not os.access(existing, os.W_OK | os.X_OK):
            reason = "read-only file system" if _read_only(existing) else "permission denied"
            raise ConfigError(f"{what} {path}: cannot write there ({reason} at {existing})")
        return path
    probe = temp_path(path / ".write-test")
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{what} {path}: cannot write there ({err.strerror or err})") from None
    return path


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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


def link_atomic(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make `path` a second name of the file `source` (a hard link: the same bytes, stored once), replacing
    `path` atomically; a durable copy where the file system has no hard links. A later atomic rewrite of
    either name (a new inode) leaves the other as it was."""
    with atomic_path(path) as tmp:
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network and FUSE file systems), or another device
            shutil.copyfile(source, tmp)
    return Path(path)


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
