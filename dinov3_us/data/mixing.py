"""Weighted mixing of several shard pools (e.g. one per source) into one resumable stream.

`MixturePlan` has the same interface as `ShufflePlan` (`total`, `samples_per_rank`, `rank_plan`), so
`ShardStream` and the loader use it unchanged, and resume is exact for the same reason: the whole
epoch is a pure function of (seed, epoch).

A mixed epoch has `samples_per_epoch` samples (default: the pools' total), `samples_per_epoch //
world` per rank. For each rank, a generator seeded by (seed, epoch, rank) draws the pool of every
position with probabilities `weights` (normalised). The k-th draw of pool p on a rank takes the k-th
sample of pool p's own per-rank order (its `ShufflePlan`, seeded with the pool's index); when a rank
exhausts its share of a pool within one mixed epoch, the pool restarts with a fresh order (a new
*cycle*), so an up-weighted small pool repeats samples while a pool drawn less than its size is seen
at most once per epoch across all ranks. Pools never repeat across ranks within a cycle.
"""

from __future__ import annotations

import numpy as np

from dinov3_us.data.shards import Shard
from dinov3_us.data.streaming import RankPlan, ShufflePlan, check_seed
from dinov3_us.errors import ConfigError

_MIX_SALT = 0x4D49_58  # separates the pool draws from the pools' own orders


class MixturePlan:
    """Epoch order of several pools mixed with `weights`; shards are numbered pool after pool."""

    def __init__(self, plans: list[ShufflePlan], weights, samples_per_epoch: int | None = None, seed: int = 0):
        if not plans:
            raise ConfigError("mixing: expected at least one pool")
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(plans),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(f"mixing weights: expected {len(plans)} numbers >= 0, sum > 0, got {weights!r}")
        for i, p in enumerate(plans):
            if w[i] > 0 and p.total == 0:
                raise ConfigError(f"mixing: pool {i} has weight {w[i]} but no samples")
        self.plans, self.weights, self.seed = list(plans), w / w.sum(), check_seed(seed)
        self.total = int(samples_per_epoch) if samples_per_epoch is not None else sum(p.total for p in plans)
        if self.total < 1:
            raise ConfigError(f"samples_per_epoch: expected an integer >= 1, got {samples_per_epoch!r}")
        self.shard_offsets = np.cumsum([0] + [len(p.counts) for p in plans])[:-1]
        self.window_offsets = np.cumsum([0] + [p.num_windows for p in plans])[:-1]
        self.num_windows = int(sum(p.num_windows for p in plans))

    def samples_per_rank(self, world_size: int) -> int:
        """Mixed samples per rank per epoch."""
        return self.total // world_size

    def draws(self, epoch: int, rank: int, world_size: int) -> np.ndarray:
        """Pool index of every position of rank `rank`'s epoch."""
        rng = np.random.default_rng([self.seed, _MIX_SALT, int(epoch), int(rank)])
        return rng.choice(len(self.plans), size=self.samples_per_rank(world_size), p=self.weights)

    def rank_plan(self, epoch: int, rank: int, world_size: int) -> RankPlan:
        """Rank `rank`'s mixed samples for `epoch` (window ids stay unique across pools and cycles)."""
        choice = self.draws(epoch, rank, world_size)
        n = len(choice)
        shard, index, window = (np.empty(n, dtype=np.int64) for _ in range(3))
        for p, plan in enumerate(self.plans):
            pos = np.flatnonzero(choice == p)
            if len(pos) == 0:
                continue
            per = plan.samples_per_rank(world_size)
            if per == 0:
                raise ConfigError(f"mixing: pool {p} has {plan.total} samples, fewer than the {world_size} ranks")
            k = np.arange(len(pos))
            cycles = k // per
            for c in range(int(cycles[-1]) + 1):
                sel = cycles == c
                sub = plan.rank_plan(epoch, rank, world_size, cycle=c)
                at = k[sel] % per
                shard[pos[sel]] = sub.shard[at] + self.shard_offsets[p]
                index[pos[sel]] = sub.index[at]
                window[pos[sel]] = sub.window[at] + self.window_offsets[p] + c * self.num_windows
        return RankPlan(shard, index, window, dropped=self.total - n * world_size)


def mixture_shards(pools: list[list[Shard]]) -> list[Shard]:
    """The flat shard list matching `MixturePlan`'s numbering (pool after pool)."""
    return [s for pool in pools for s in pool]
