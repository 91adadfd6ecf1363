"""The resumable, distributed sample stream over tar shards: an epoch's order is a pure function of (seed, epoch).

Epoch order (`ShufflePlan`): the shard list is shuffled with a generator seeded by (seed, epoch); the
shuffled shards are cut into read windows of `window_shards` consecutive shards, and the samples of
each window are shuffled together. That gives the epoch's *global order* of all `total` samples,
computed from the manifest counts alone (no data is read).

Ranks: with `world` ranks, each rank gets `per_rank = total // world` samples, rank r the contiguous
slice `[r * per_rank, (r + 1) * per_rank)` of the global order; the last `total % world` samples of
the global order (< world per epoch, different ones each epoch) are dropped. Every rank therefore
yields the same number of samples and batches, and within an epoch no sample reaches two ranks.

Batches and workers (`ShardStream`): a rank's slice is cut into batches of `batch_size` consecutive
positions starting at the resume position; batch k goes to DataLoader worker `k % num_workers`, which
is the order in which the DataLoader returns them (round robin, `in_order=True`), so a rank's batch
sequence does not depend on the number of workers. A worker loads the samples it needs from one read
window at a time (one forward pass per shard, skipping other workers' members), so reads stay
sequential and memory is bounded by about `window_shards` shards / num_workers.

Resume: the state is (epoch, position), position = samples of this rank's slice that the *trainer*
consumed (`dinov3_us.data.loader.StreamingLoader` counts returned batches, not prefetched ones); the
remainder of the epoch is exactly positions [position, per_rank). Batch size and worker count may
change on resume; the world size and the shard list may not.

Bad samples (corrupted PNG, missing image, truncated tar / shard shorter than its count, unreadable
shard) are skipped with a log line and counted by reason; `strict=True` raises `DataError` instead.
A skipped sample still occupies its position, so batches shrink but every rank keeps the same number
of batches (no deadlock in DDP) and resume stays exact; a batch with no readable sample is an error.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from dinov3_us.data.shards import Shard, read_samples
from dinov3_us.errors import ConfigError, DataError

logger = logging.getLogger("dinov3_us")

_TRANSFORM_SALT = 0x5EED_A06  # separates transform seeds from plan seeds
_COLLATE_SALT = 0x5EED_C01


@dataclass
class RankPlan:
    """One rank's samples for one epoch, in consumption order (arrays of equal length)."""

    shard: np.ndarray  # index into the stream's flat shard list
    index: np.ndarray  # sample position inside that shard
    window: np.ndarray  # read-window id: samples of one window are loaded together
    dropped: int  # samples of the epoch that no rank gets

    def __len__(self) -> int:
        return len(self.shard)


def check_seed(seed) -> int:
    """A non-negative int seed, else ConfigError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected an integer >= 0, got {seed!r}")
    return int(seed)


class ShufflePlan:
    """The epoch order of one pool of shards (see the module docstring); `counts` are the shards' `n`."""

    def __init__(self, counts, seed: int = 0, shuffle: bool = True, window_shards: int = 8):
        self.counts = np.asarray(counts, dtype=np.int64)
        if self.counts.ndim != 1 or len(self.counts) == 0 or (self.counts < 0).any():
            raise DataError(f"expected one or more shards with sample counts >= 0, got {list(counts)!r}")
        if isinstance(window_shards, bool) or not isinstance(window_shards, int) or window_shards < 1:
            raise ConfigError(f"window_shards: expected an integer >= 1, got {window_shards!r}")
        self.seed, self.shuffle, self.window_shards = check_seed(seed), bool(shuffle), window_shards
        self.total = int(self.counts.sum())
        self.num_windows = -(-len(self.counts) // window_shards)

    def samples_per_rank(self, world_size: int) -> int:
        """Samples each of `world_size` ranks gets per epoch (`total // world_size`)."""
        return self.total // world_size

    def global_order(self, epoch: int, cycle: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, index, window) of all samples in the epoch's order; `cycle` re-draws (for mixing)."""
        rng = np.random.default_rng([self.seed, int(epoch), int(cycle)])
        order = rng.permutation(len(self.counts)) if self.shuffle else np.arange(len(self.counts))
        sizes = self.counts[order]
        shard = np.repeat(order, sizes)
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
        index = np.arange(self.total, dtype=np.int64) - starts
        window = np.repeat(np.arange(len(order)) // self.window_shards, sizes)
        if self.shuffle:
            perm = np.lexsort((rng.random(self.total), window))  # random order within each window
            shard, index, window = shard[perm], index[perm], window[perm]
        return shard, index, window

    def rank_plan(self, epoch: int, rank: int, world_size: int, cycle: int = 0) -> RankPlan:
        """Rank `rank`'s contiguous slice of the epoch's global order."""
        per = self.samples_per_rank(world_size)
        if per == 0:
            raise DataError(f"{self.total} samples cannot be shared by {world_size} ranks (need >= 1 each)")
        shard, index, window = self.global_order(epoch, cycle)
        sl = slice(rank * per, (rank + 1) * per)
        return RankPlan(shard[sl], index[sl], window[sl], self.total - per * world_size)


class _WindowReader:
    """Loads a worker's samples one read window at a time and hands them out by position."""

    def __init__(self, shards: list[Shard], plan: RankPlan, positions: np.ndarray):
        self.shards, self.plan, self.cache = shards, plan, {}
        win = plan.window[positions]
        order = np.argsort(win, kind="stable")
        ids, first = np.unique(win[order], return_index=True)
        self.groups = dict(zip(ids.tolist(), np.split(positions[order], first[1:]), strict=True))

    def take(self, pos: int):
        """(key, {ext: bytes}) of position `pos`, or (reason, detail) when it could not be read."""
        if pos not in self.cache:
            self._load(int(self.plan.window[pos]))
        return self.cache.pop(pos)

    def _load(self, window: int) -> None:
        positions = self.groups.pop(window)
        shard_ids = self.plan.shard[positions]
        for s in np.unique(shard_ids).tolist():
            sel = positions[shard_ids == s]
            idx = self.plan.index[sel].tolist()
            url = self.shards[s].url
            found, error = read_samples(url, idx)
            missing = len(idx) - len(found)
            if missing:
                logger.warning("%s: %d wanted sample(s) unreadable (%s)", url, missing, error or "shard ended early")
            for p, i in zip(sel.tolist(), idx, strict=True):
                if i in found:
                    self.cache[p] = found[i]
                else:
                    reason = "shard_error" if error else "missing_sample"
                    self.cache[p] = (None, (reason, f"{url} sample #{i}: {error or 'fewer samples than its count'}"))


def _accepts_generator(transform) -> bool:
    try:
        return "generator" in inspect.signature(transform).parameters
    except (TypeError, ValueError):
        return False


def list_collate(samples: list) -> list:
    """Default collate: the list of samples as is."""
    return samples


class ShardStream(IterableDataset):
    """Iterable of `(collated_batch, info)` for one rank; `info` = {epoch, start, stop, skipped}.

    Each sample is `(image, meta)`: the PNG decoded to PIL (`mode`, default 'L') then `transform`
    applied in the worker; `meta` is the sample's JSON plus `__key__`, `__url__`, `__index__`. A
    transform accepting `generator=` gets a numpy generator seeded by (seed, epoch, rank, position),
    and a collate_fn accepting `generator=` (e.g. `collate_data_and_cast`, for the iBOT masks) one
    seeded by (seed, epoch, rank, batch start), overriding any bound one: augmentations and masks are
    then reproducible after a resume and independent of the worker count.
    """

    def __init__(self, shards, plan, batch_size: int, *, rank: int = 0, world_size: int = 1, transform=None,
                 collate_fn=None, drop_last: bool = False, strict: bool = False, seed: int = 0, mode: str = "L"):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        self.shards, self.plan, self.batch_size = list(shards), plan, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, check_seed(seed)
        self.transform, self.collate_fn = transform, collate_fn or list_collate
        self.drop_last, self.strict, self.mode = drop_last, strict, mode
        self._seeded = transform is not None and _accepts_generator(transform)
        self._seeded_collate = _accepts_generator(self.collate_fn)
        self.epoch, self.start = 0, 0

    def num_positions(self) -> int:
        """Positions of this rank's epoch that are served (per_rank, trimmed to whole batches if drop_last)."""
        per = self.plan.samples_per_rank(self.world_size)
        return per - (per - self.start) % self.batch_size if self.drop_last else per

    def num_batches(self) -> int:
        """Batches from the current start position to the end of the epoch."""
        return max(0, -(-(self.num_positions() - self.start) // self.batch_size))

    def __iter__(self):
        """This worker's batches (every `num_workers`-th from `start`) of the rank's epoch, with their info."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        end, step = self.num_positions(), self.batch_size
        starts = np.arange(self.start, end, step)[worker::workers]
        if len(starts) == 0:
            return
        plan = self.plan.rank_plan(self.epoch, self.rank, self.world_size)
        mine = np.concatenate([np.arange(s, min(s + step, end)) for s in starts])
        reader = _WindowReader(self.shards, plan, mine)
        for s in starts.tolist():
            stop, samples, skipped = min(s + step, end), [], Counter()
            for pos in range(s, stop):
                sample, reason = self._decode(reader.take(pos), plan, pos)
                if reason is None:
                    samples.append(sample)
                else:
                    skipped[reason] += 1
            if not samples:
                raise DataError(f"epoch {self.epoch} rank {self.rank}: no readable sample in positions [{s}, {stop})")
            if self._seeded_collate:
                batch = self.collate_fn(samples, generator=np.random.default_rng([*self._key(), _COLLATE_SALT, s]))
            else:
                batch = self.collate_fn(samples)
            yield batch, {"epoch": self.epoch, "start": s, "stop": stop, "skipped": dict(skipped)}

    def _key(self) -> list[int]:
        return [self.seed, self.epoch, self.rank]

    def _decode(self, raw, plan: RankPlan, pos: int):
        """(sample, None) or (None, reason); logs and counts bad samples, raises under `strict`."""
        key, members = raw
        url, idx = self.shards[int(plan.shard[pos])].url, int(plan.index[pos])
        if key is None:
            reason, detail = members
        elif "png" not in members:
            reason, detail = "missing_image", f"{url} sample {key!r}: no .png member"
        else:
            try:
                image = Image.open(io.BytesIO(members["png"]))
                image.load()
                image = image if image.mode == self.mode else image.convert(self.mode)
                meta = json.loads(members["json"]) if "json" in members else {}
                meta = meta if isinstance(meta, dict) else {"json": meta}
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                reason, detail = "corrupt_sample", f"{url} sample {key!r}: {type(e).__name__}: {e}"
            else:
                meta.update(__key__=key, __url__=url, __index__=idx)
                if self.transform is not None:
                    if self._seeded:
                        rng = np.random.default_rng([*self._key(), _TRANSFORM_SALT, pos])
                        image = self.transform(image, generator=rng)
                    else:
                        image = self.transform(image)
                return (image, meta), None
        if self.strict:
            raise DataError(f"{detail} ({reason}; strict=True)")
        logger.warning("skipping a sample (%s): %s", reason, detail)
        return None, reason
