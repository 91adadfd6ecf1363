"""iBOT MaskingGenerator: exact counts, block structure, determinism."""

import numpy as np
import pytest
import torch

from dinov3_us.data.masking import MaskingGenerator
from dinov3_us.errors import ConfigError


def neighbour_fraction(mask: np.ndarray) -> float:
    """Fraction of masked patches with at least one masked 4-neighbour."""
    padded = np.pad(mask, 1)
    neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return float((mask & neighbours).sum() / max(1, mask.sum()))


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5])
def test_exact_number_of_masked_patches(ratio):
    gen = MaskingGenerator((14, 14), max_num_patches=int(0.5 * 196), generator=0)
    for _ in range(20):
        n = int(196 * ratio)
        mask = gen(n)
        assert mask.shape == (14, 14) and mask.dtype == bool and int(mask.sum()) == n


def test_masks_are_blocks_not_scattered_patches():
    gen = MaskingGenerator((14, 14), max_num_patches=98, generator=1)
    rng = np.random.default_rng(1)
    block, scattered = [], []
    for _ in range(30):
        block.append(neighbour_fraction(gen(40)))
        random_mask = np.zeros(196, bool)
        random_mask[rng.choice(196, 40, replace=False)] = True
        scattered.append(neighbour_fraction(random_mask.reshape(14, 14)))
    assert np.mean(block) > 0.9 > np.mean(scattered) + 0.2


def test_block_aspect_and_min_size_on_a_single_block():
    gen = MaskingGenerator((16, 16), min_num_patches=4, max_num_patches=16, generator=2)
    mask = np.zeros((16, 16), bool)
    added = gen._add_block(mask, 16, np.random.default_rng(3))
    rows, cols = np.nonzero(mask)
    h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert added == h * w == mask.sum() and 2 <= added <= 16 and 0.2 <= h / w <= 5


def test_determinism_and_generator_precedence():
    a = MaskingGenerator((8, 12), generator=5)
    b = MaskingGenerator((8, 12), generator=5)
    assert np.array_equal(a(30), b(30)) and a(30).shape == (8, 12)
    assert np.array_equal(a(20, generator=9), b(20, generator=9))
    assert not np.array_equal(a(20, generator=9), a(20, generator=10))
    plain = MaskingGenerator(8)  # no generator: torch's global RNG
    torch.manual_seed(0)
    first = plain(20)
    torch.manual_seed(0)
    assert np.array_equal(first, plain(20))


def test_invalid_arguments():
    gen = MaskingGenerator((4, 4))
    with pytest.raises(ConfigError, match="num_masking_patches"):
        gen(17)
    with pytest.raises(ConfigError, match="min_aspect"):
        MaskingGenerator((4, 4), min_aspect=0.0)
    assert "MaskingGenerator(4, 4" in repr(gen)
