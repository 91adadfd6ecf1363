"""iBOT block masking: `MaskingGenerator` (the official name and call signature), seeded explicitly.

A call `mask_generator(n)` returns a boolean [h, w] patch mask with exactly `n` masked patches:
rectangular blocks (each of `min_num_patches` to `max_num_patches` patches, aspect ratio
log-uniform in [min_aspect, max_aspect]) are added until no block fits or `n` is reached, and the
rest is filled with random single patches, as the official generator does.

Randomness: a `generator` passed to the call wins; else the one given to the constructor (a numpy
`Generator` advances from call to call; an int seeds one); else a seed is drawn per call from torch's
global RNG, which `DataLoader` workers reseed, so workers do not repeat each other's masks.
"""

from __future__ import annotations

import math

import numpy as np

from dinov3_us.data.rng import GeneratorLike, as_rng
from dinov3_us.errors import ConfigError


class MaskingGenerator:
    """Block-wise patch masks for a grid of `input_size = (h, w)` patches (an int means square)."""

    def __init__(
        self,
        input_size,
        num_masking_patches: int | None = None,
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        generator: GeneratorLike = None,
    ):
        height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if height < 1 or width < 1:
            raise ConfigError(f"input_size: expected positive patch-grid sizes, got {input_size!r}")
        self.height, self.width = int(height), int(width)
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = int(min_num_patches)
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        if self.max_num_patches is None:
            self.max_num_patches = self.num_patches
        if not min_aspect > 0:
            raise ConfigError(f"min_aspect: expected > 0, got {min_aspect}")
        max_aspect = max_aspect or 1.0 / min_aspect
        if not min_aspect <= max_aspect:
            raise ConfigError(f"min_aspect / max_aspect: expected 0 < min <= max, got {min_aspect}, {max_aspect}")
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.rng = as_rng(generator) if generator is not None else None

    def __repr__(self) -> str:
        lo, hi = self.log_aspect_ratio
        return (f"MaskingGenerator({self.height}, {self.width} -> [{self.min_num_patches} ~ {self.max_num_patches}], "
                f"max = {self.num_masking_patches}, {lo:.3f} ~ {hi:.3f})")

    def get_shape(self) -> tuple[int, int]:
        """(h, w) of the patch grid."""
        return self.height, self.width

    def _add_block(self, mask: np.ndarray, max_mask_patches: int, rng: np.random.Generator) -> int:
        """Try (10 times) to mask one new block of at most `max_mask_patches` new patches; return how many."""
        for _ in range(10):
            target_area = self.min_num_patches + (max_mask_patches - self.min_num_patches) * rng.random()
            aspect = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area / aspect)))
            w = int(round(math.sqrt(target_area * aspect)))
            if w < self.width and h < self.height:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                new = h * w - int(mask[top : top + h, left : left + w].sum())
                if 0 < new <= max_mask_patches:
                    mask[top : top + h, left : left + w] = True
                    return new
        return 0

    def __call__(self, num_masking_patches: int = 0, generator: GeneratorLike = None) -> np.ndarray:
        """A boolean mask [h, w] with exactly `num_masking_patches` True entries."""
        if not 0 <= num_masking_patches <= self.num_patches:
            raise ConfigError(f"num_masking_patches: expected 0..{self.num_patches}, got {num_masking_patches}")
        rng = as_rng(generator if generator is not None else self.rng)
        mask = np.zeros(self.get_shape(), dtype=bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            delta = self._add_block(mask, budget, rng)
            if delta == 0:
                break
            count += delta
        return self.complete_mask_randomly(mask, num_masking_patches, rng)

    def complete_mask_randomly(self, mask: np.ndarray, num_masking_patches: int, rng: np.random.Generator):
        """Mask random extra patches until `num_masking_patches` are masked."""
        flat = mask.flatten()
        missing = num_masking_patches - int(flat.sum())
        if missing > 0:
            flat[rng.choice(np.flatnonzero(~flat), size=missing, replace=False)] = True
        return flat.reshape(mask.shape)
