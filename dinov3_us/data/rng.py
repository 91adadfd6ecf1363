"""Explicit random-number generators for the data path: the same seed gives the same crops.

Every random transform in `dinov3_us.data` (the augmentations, the iBOT masks) draws from a
`numpy.random.Generator` that the caller passes in. `as_rng` accepts the forms a caller is likely to hold:

- a `numpy.random.Generator`: used as is (its state advances);
- a `torch.Generator`: one 63-bit seed is drawn from it (its state advances) to seed a numpy one;
- an `int`: a fresh numpy generator seeded with it;
- `None`: a seed is drawn from torch's global generator. In a `DataLoader` worker torch reseeds that
  generator per worker and per epoch, so workers never repeat each other's crops, and a process
  that calls `torch.manual_seed(s)` gets reproducible crops.
"""

from __future__ import annotations

import numpy as np
import torch

from dinov3_us.errors import ConfigError

GeneratorLike = np.random.Generator | torch.Generator | int | None

_SEED_HIGH = 2**63 - 1


def as_rng(generator: GeneratorLike = None) -> np.random.Generator:
    """Return a numpy `Generator` for `generator` (numpy / torch generator, int seed or None)."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, _SEED_HIGH, (1,), generator=generator).item())
        return np.random.default_rng(seed)
    if generator is None:
        return np.random.default_rng(int(torch.randint(0, _SEED_HIGH, (1,)).item()))
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    raise ConfigError(f"generator: expected a numpy/torch Generator, an int seed or None, got {type(generator)!r}")
