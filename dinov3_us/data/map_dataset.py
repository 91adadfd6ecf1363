"""Map-style random access to labelled shards (the evaluation splits): `ShardMapDataset`.

The tars are indexed once at construction (one pass over each shard's headers, reading only the
small `.json` members for the labels); `__getitem__` then reads one image with `os.pread` at its
recorded offset. The length is exactly the shards' sample count, every index is one sample, so an
epoch with any sampler is exact (no padding, no drops); for distributed evaluation `rank_indices`
splits the indices without padding. A shard whose content does not match its manifest count is a
`DataError` (evaluation must not silently lose samples). Local files only (`pipe:` cannot seek).
"""

from __future__ import annotations

import bisect
import io
import json
import logging
import os

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from dinov3_us.data.shards import (
    READ_ERRORS,
    check_end,
    iter_members,
    load_manifest,
    open_tar,
    parse_dir_spec,
    resolve_shards,
)
from dinov3_us.errors import DataError

logger = logging.getLogger("dinov3_us")


def index_shard(url: str) -> list[tuple[str, dict[str, tuple[int, int]], dict]]:
    """[(key, {ext: (offset, size)}, json_meta)] of every sample of a local tar shard, in order."""
    if url.startswith("pipe:"):
        raise DataError(f"{url}: the map-style reader needs local (seekable) shards, not pipe: URLs")
    path, samples = url.removeprefix("file:"), []
    try:
        with open_tar(path) as tar:
            for idx, key, ext, info in iter_members(tar):
                if idx == len(samples):
                    samples.append((key, {}, {}))
                samples[-1][1][ext] = (info.offset_data, info.size)
                if ext == "json":
                    samples[-1][2].update(json.loads(tar.extractfile(info).read()))
            check_end(tar)
    except (*READ_ERRORS, ValueError) as e:
        raise DataError(f"{path}: cannot index this shard ({type(e).__name__}: {e})") from None
    return samples


def _manifest_classes(spec) -> list[str] | None:
    parsed = parse_dir_spec(spec) if isinstance(spec, (str, os.PathLike)) else None
    if parsed is None:
        return None
    manifest = load_manifest(parsed[0])
    if isinstance(manifest.get("labels"), list) and manifest["labels"]:
        return [str(lab) for lab in manifest["labels"]]  # the curator's class order
    counts = manifest.get("counts", {})
    labels = {lab for per_split in counts.values() if isinstance(per_split, dict) for lab in per_split}
    return sorted(lab for lab in labels if lab not in (None, "null", "None"))


def rank_indices(length: int, rank: int, world_size: int) -> range:
    """This rank's contiguous share of `range(length)`: exact cover, sizes differ by at most one."""
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world size {world_size}")
    return range(rank * length // world_size, (rank + 1) * length // world_size)


class ShardMapDataset(Dataset):
    """`ds[i] -> (image, target, meta)`: image decoded ('L' PIL, or a uint8 array with `decode="numpy"`)
    then `transform`ed; target = index of the JSON `label` in `classes` (-1 when unlabelled); meta = the
    JSON plus `__key__`, `__url__` and, with `with_mask`, the decoded `mask` (None when absent).

    `classes` defaults to the manifest's `labels` list, else the sorted labels of every split of its
    `counts` (so train/val/test agree), else the labels found in the shards.
    """

    def __init__(self, spec, *, transform=None, decode: str = "pil", mode: str = "L", with_mask: bool = False,
                 classes: list[str] | None = None):
        if decode not in ("pil", "numpy"):
            raise DataError(f"decode: expected 'pil' or 'numpy', got {decode!r}")
        self.transform, self.decode, self.mode, self.with_mask = transform, decode, mode, with_mask
        self.shards = resolve_shards(spec)
        self.urls, self.entries, self.starts = [], [], []
        for shard in self.shards:
            samples = index_shard(shard.url)
            if len(samples) != shard.n:
                raise DataError(f"{shard.url}: holds {len(samples)} samples, its manifest says {shard.n}")
            self.starts.append(len(self.entries))
            self.urls.append(shard.url.removeprefix("file:"))
            self.entries += [(len(self.urls) - 1, key, members, meta) for key, members, meta in samples]
        found = sorted({str(m["label"]) for _, _, _, m in self.entries if m.get("label") is not None})
        self.classes = list(classes) if classes is not None else (_manifest_classes(spec) or found)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted(set(found) - set(self.class_to_idx))
        if unknown:
            raise DataError(f"labels {unknown} are not in classes {self.classes}")
        self.targets = np.array([self._target(m) for _, _, _, m in self.entries], dtype=np.int64)
        self._fds: dict[str, int] = {}
        logger.info("indexed %d samples in %d shards (%d classes)", len(self), len(self.shards), len(self.classes))

    def _target(self, meta: dict) -> int:
        label = meta.get("label")
        return -1 if label is None else self.class_to_idx[str(label)]

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict:  # file descriptors do not travel to spawned workers
        return {**self.__dict__, "_fds": {}}

    def _read(self, url: str, where: tuple[int, int]) -> bytes:
        fd = self._fds.get(url)
        if fd is None:
            fd = self._fds[url] = os.open(url, os.O_RDONLY)
        offset, size = where
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise DataError(f"{url}: member at offset {offset} is truncated ({len(data)} of {size} bytes)")
        return data

    def _image(self, url: str, members: dict, ext: str, key: str):
        try:
            image = Image.open(io.BytesIO(self._read(url, members[ext])))
            image.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{url} sample {key!r}: unreadable .{ext} ({type(e).__name__}: {e})") from None
        image = image if image.mode == self.mode else image.convert(self.mode)
        return np.asarray(image) if self.decode == "numpy" else image

    def __getitem__(self, i: int):
        """(image, target, meta) of sample `i` (negative indices count from the end)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        u, key, members, meta = self.entries[i]
        url = self.urls[u]
        if "png" not in members:
            raise DataError(f"{url} sample {key!r}: no .png member")
        image = self._image(url, members, "png", key)
        meta = {**meta, "__key__": key, "__url__": url}
        if self.with_mask:
            meta["mask"] = self._image(url, members, "mask.png", key) if "mask.png" in members else None
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[i]), meta

    def shard_of(self, i: int) -> int:
        """Index (into `self.shards`) of the shard holding sample `i`."""
        return bisect.bisect_right(self.starts, i % len(self)) - 1
