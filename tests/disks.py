"""Real small or read-only disks for the tests: a tmpfs mounted on a folder (root only; the test skips elsewhere)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, *options: str) -> Iterator[Path]:
    """A tmpfs of `size` (`"2m"`) mounted on `folder` with mount `options` (`"ro"`), unmounted afterwards."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs",
                              str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): this test needs a real small or read-only disk")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
