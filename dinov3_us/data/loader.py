"""`make_data_loader`: a torch DataLoader over the shard stream whose state goes into the checkpoint.

    loader = make_data_loader("data/pool:train", batch_size=64, num_workers=8, transform=aug, collate_fn=fn)
    loader.load_state_dict(ckpt["data"])          # optional: resume mid-epoch
    for batch in loader.infinite():               # or: `for batch in loader` = rest of the current epoch
        step(batch); ckpt["data"] = loader.state_dict()

The state counts what the trainer *consumed*: a batch counts once the loader has returned it, however
far the DataLoader workers have prefetched, so a restart resumes right after the last returned batch.
State dict (plain ints/strings, `torch.save`/JSON friendly)::

    {"version": 1, "epoch": int, "position": int,  # samples of this rank's epoch already consumed
     "samples_per_rank": int, "num_samples": int, "world_size": int, "rank": int, "seed": int,
     "batch_size": int, "dataset": str,            # sha1 of the shard names and counts
     "skipped": {reason: n}}                       # bad samples skipped on this rank so far

`load_state_dict` refuses a state from another seed, world size or dataset (DataError / ConfigError);
the batch size and the number of workers may differ (positions are counted in samples). Any rank's
state can be loaded on every rank (they differ only in `rank` and `skipped`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter

import numpy as np
import torch
from torch.utils.data import DataLoader

from dinov3_us.data.mixing import MixturePlan, mixture_shards
from dinov3_us.data.shards import resolve_shards
from dinov3_us.data.streaming import ShardStream, ShufflePlan
from dinov3_us.distributed import get_rank, get_world_size
from dinov3_us.errors import ConfigError, DataError

logger = logging.getLogger("dinov3_us")

STATE_VERSION = 1


_LOADER_SALT = 0x10AD  # separates the DataLoader's generator seeds from the stream's

def _passthrough(item):
    return item


def _digest(shards) -> str:
    text = "\n".join(f"{os.path.basename(s.url)} {s.n}" for s in shards)
    return hashlib.sha1(text.encode()).hexdigest()


class StreamingLoader:
    """Iterates a `ShardStream` through a DataLoader and tracks the consumed position (see module docstring)."""

    def __init__(self, stream: ShardStream, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int | None = None, multiprocessing_context=None):
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers: expected an integer >= 0, got {num_workers!r}")
        self.stream, self.num_workers, self.pin_memory = stream, num_workers, pin_memory
        self.prefetch_factor = prefetch_factor if num_workers > 0 else None
        self.multiprocessing_context = multiprocessing_context if num_workers > 0 else None
        self.epoch, self.position, self.skipped = 0, 0, Counter()

    @property
    def samples_per_rank(self) -> int:
        """Samples this rank consumes per epoch (before drop_last trimming)."""
        return self.stream.plan.samples_per_rank(self.stream.world_size)

    @property
    def dropped_per_epoch(self) -> int:
        """Samples of each epoch's global order that no rank gets (the last `total % world_size`)."""
        return self.stream.plan.total - self.samples_per_rank * self.stream.world_size

    def __len__(self) -> int:
        """Batches in a whole epoch (the same on every rank)."""
        s = self.stream
        per = self.samples_per_rank
        return per // s.batch_size if s.drop_last else -(-per // s.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of `epoch`."""
        self.epoch, self.position = int(epoch), 0

    def __iter__(self):
        """Yield the remaining batches of the current epoch, then move to the next epoch."""
        s = self.stream
        if len(self) == 0:
            per = self.samples_per_rank
            raise ConfigError(f"batch_size {s.batch_size} with drop_last: no whole batch in {per} samples")
        s.epoch, s.start = self.epoch, self.position
        if s.num_batches() == 0:  # the previous pass stopped right after the epoch's last batch
            self.set_epoch(self.epoch + 1)
            s.epoch, s.start = self.epoch, 0
        # Its own generator: `iter(DataLoader)` draws the workers' base seed from it, and drawing from the
        # global RNG instead would shift every later random op (drop path, RoPE jitter) by when the
        # iterator was made: at an epoch start in one run, at the resume point in a resumed one.
        entropy = np.random.SeedSequence([_LOADER_SALT, s.seed, s.rank, self.epoch, self.position])
        generator = torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0] >> 1))
        loader = DataLoader(s, batch_size=None, num_workers=self.num_workers, collate_fn=_passthrough,
                            pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor,
                            multiprocessing_context=self.multiprocessing_context, in_order=True,
                            generator=generator)
        for batch, info in loader:
            if info["epoch"] != self.epoch or info["start"] != self.position:
                raise RuntimeError(f"internal: batch {info} arrived out of order (expected position {self.position})")
            self.position = info["stop"]
            self.skipped.update(info["skipped"])
            yield batch
        self.set_epoch(self.epoch + 1)

    def infinite(self):
        """Yield batches forever, epoch after epoch."""
        while True:
            yield from self

    def state_dict(self) -> dict:
        """The resumable state (see the module docstring)."""
        s = self.stream
        return {"version": STATE_VERSION, "epoch": self.epoch, "position": self.position,
                "samples_per_rank": self.samples_per_rank, "num_samples": s.plan.total,
                "world_size": s.world_size, "rank": s.rank, "seed": s.seed, "batch_size": s.batch_size,
                "dataset": _digest(s.shards), "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`'s output (of this or any rank of the same run)."""
        s = self.stream
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise DataError(f"data loader state: expected version {STATE_VERSION}, got {state!r:.200}")
        for key, ours in (("seed", s.seed), ("world_size", s.world_size)):
            if state.get(key) != ours:
                raise ConfigError(f"data loader state: saved with {key}={state.get(key)!r}, this run has {ours!r}; "
                                  "exact resume needs the same value")
        if state.get("dataset") != _digest(s.shards) or state.get("num_samples") != s.plan.total:
            raise DataError("data loader state: saved for another shard list "
                            f"({state.get('num_samples')} samples vs {s.plan.total} now)")
        if not 0 <= int(state["position"]) <= self.samples_per_rank:
            raise DataError(f"data loader state: position {state['position']} outside [0, {self.samples_per_rank}]")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.skipped = Counter(state.get("skipped", {}))


def make_data_loader(dataset, *, batch_size: int, num_workers: int = 0, transform=None, collate_fn=None,
                     seed: int = 0, shuffle: bool = True, window_shards: int = 8, weights=None,
                     samples_per_epoch: int | None = None, drop_last: bool = False, strict: bool = False,
                     rank: int | None = None, world_size: int | None = None, pin_memory: bool = False,
                     prefetch_factor: int | None = 2, mode: str = "L", multiprocessing_context=None) -> StreamingLoader:
    """Build a resumable `StreamingLoader` over `dataset`.

    Args:
        dataset: a spec of `dinov3_us.data.shards.resolve_shards`; with `weights`, a list of specs, one per pool.
        batch_size: samples per batch (per rank).
        num_workers: DataLoader worker processes (0: read in the main process); the order does not depend on it.
        transform: applied to each decoded PIL image in the worker (e.g. `DataAugmentationDINO`).
        collate_fn: list of `(image, meta)` samples -> batch (default: the list itself).
        seed: seeds the epoch orders, the pool draws and the transform / collate_fn where they take `generator=`.
        shuffle: shuffle shards and samples (False: manifest order, e.g. for feature extraction).
        window_shards: shards whose samples are shuffled together (more: better mixing, more memory).
        weights: per-pool sampling weights, one per spec in `dataset` (see `dinov3_us.data.mixing`).
        samples_per_epoch: mixed samples per epoch (default: the pools' total).
        drop_last: drop each rank's last partial batch.
        strict: raise on a corrupted/missing sample instead of skipping and counting it.
        rank: this process's rank (default: torch.distributed's, else 0).
        world_size: number of ranks (default: torch.distributed's, else 1).
        pin_memory: DataLoader pin_memory.
        prefetch_factor: batches prefetched per worker.
        mode: PIL mode the PNGs are decoded to ('L' grayscale).
        multiprocessing_context: DataLoader multiprocessing context (default: the platform's).
    """
    d_rank, d_world = get_rank(), get_world_size()
    rank, world_size = (d_rank if rank is None else rank), (d_world if world_size is None else world_size)
    if weights is None:
        shards = resolve_shards(dataset)
        plan = ShufflePlan([sh.n for sh in shards], seed, shuffle, window_shards)
        if samples_per_epoch is not None:
            raise ConfigError("samples_per_epoch: only used with weights (mixing several pools)")
    else:
        if not isinstance(dataset, (list, tuple)) or len(dataset) != len(weights):
            raise ConfigError(f"weights: expected one weight per pool spec in dataset, got {weights!r} for {dataset!r}")
        pools = [resolve_shards(spec) for spec in dataset]
        plans = [ShufflePlan([sh.n for sh in pool], seed + i, shuffle, window_shards) for i, pool in enumerate(pools)]
        plan, shards = MixturePlan(plans, weights, samples_per_epoch, seed), mixture_shards(pools)
    stream = ShardStream(shards, plan, batch_size, rank=rank, world_size=world_size, transform=transform,
                         collate_fn=collate_fn, drop_last=drop_last, strict=strict, seed=seed, mode=mode)
    logger.info("data: %d shards, %d samples/epoch, %d per rank (%d dropped), rank %d/%d, %d workers",
                len(shards), plan.total, plan.samples_per_rank(world_size), plan.total % world_size,
                rank, world_size, num_workers)
    return StreamingLoader(stream, num_workers, pin_memory, prefetch_factor, multiprocessing_context)
