"""Names inside a shard folder: the manifest file, shard file names and the sample-key rule.

A curated folder holds `{split}-NNNNNN.tar` shards and `manifest.json`. Inside a tar every member
is `KEY.EXT` (`KEY.png`, `KEY.json`, `KEY.mask.png`): the key ends at the first dot of the
basename, webdataset's rule, so `dir/a.mask.png` is sample `dir/a`, member `mask.png`.
"""

from __future__ import annotations

import re

MANIFEST = "manifest.json"
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
# `train-000000.tar`, and the temporary files a crash may leave: `fileio.temp_path` names
# (`.train-000000.tar.PID.HEX.tmp`) and the `train-000000.tar.tmp` of builds before it was used.
_SHARD_FILE_RE = re.compile(r"^(?:[A-Za-z0-9_]+-\d{6}\.tar(\.tmp)?|\.[A-Za-z0-9_]+-\d{6}\.tar\.\d+\.[0-9a-f]+\.tmp)$")


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`: `{split}-NNNNNN.tar`."""
    return f"{split}-{index:06d}.tar"


def is_shard_file(name: str) -> bool:
    """Whether file name `name` is a shard (or an unfinished shard's temporary file) a build wrote."""
    return _SHARD_FILE_RE.match(name) is not None


def split_key(name: str) -> tuple[str, str]:
    """Tar member name -> (sample key, extension), webdataset's rule: the key ends at the first dot."""
    m = _KEY_RE.match(name)
    return (m.group(1), m.group(2)) if m else (name, "")
