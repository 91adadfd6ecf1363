"""collate_data_and_cast: keys, shapes, crop order, mask counts and weights, determinism."""

import numpy as np
import pytest
import torch

from dinov3_us.data.augment import DataAugmentationDINO
from dinov3_us.data.collate import collate_data_and_cast
from dinov3_us.data.masking import MaskingGenerator
from dinov3_us.errors import ConfigError

GRID = (8, 8)  # patch grid of a global crop
N_TOKENS = 64


def make_samples(batch: int, n_local: int = 3, gram: bool = False) -> list:
    """`batch` samples `(crops, target)` whose crop values encode (sample, crop index)."""
    samples = []
    for b in range(batch):
        crops = {
            "global_crops": [torch.full((1, 16, 16), 10.0 * b + i) for i in range(2)],
            "local_crops": [torch.full((1, 8, 8), 10.0 * b + i) for i in range(n_local)],
            "offsets": (),
        }
        if gram:
            crops["gram_teacher_crops"] = [torch.full((1, 24, 24), 10.0 * b + i) for i in range(2)]
        samples.append((crops, None))
    return samples


def collate(samples, **kwargs):
    args = {"mask_ratio_tuple": (0.1, 0.5), "mask_probability": 0.5, "dtype": torch.float32,
            "n_tokens": N_TOKENS, "mask_generator": MaskingGenerator(GRID, max_num_patches=32), "generator": 0}
    return collate_data_and_cast(samples, **{**args, **kwargs})


def test_keys_shapes_and_crop_major_order():
    out = collate(make_samples(4, gram=True), dtype=torch.bfloat16)
    assert set(out) == {"collated_global_crops", "collated_local_crops", "collated_masks", "mask_indices_list",
                        "masks_weight", "upperbound", "n_masked_patches", "global_batch_size",
                        "collated_gram_teacher_crops"}
    assert out["collated_global_crops"].shape == (8, 1, 16, 16) and out["collated_global_crops"].dtype == torch.bfloat16
    assert out["collated_local_crops"].shape == (12, 1, 8, 8)
    assert out["collated_gram_teacher_crops"].shape == (8, 1, 24, 24)
    assert out["collated_masks"].shape == (8, N_TOKENS) and out["collated_masks"].dtype == torch.bool
    # crop-major: row i * B + b is crop i of sample b
    values = out["collated_global_crops"][:, 0, 0, 0].float().tolist()
    assert values == [0.0, 10.0, 20.0, 30.0, 1.0, 11.0, 21.0, 31.0]
    assert out["global_batch_size"] == 4


def test_mask_counts_spread_between_min_and_max_ratio():
    batch = 8
    out = collate(make_samples(batch), mask_probability=0.5)
    counts = sorted(out["collated_masks"].sum(-1).tolist())
    n_masked_images = int(2 * batch * 0.5)
    ratios = torch.linspace(0.1, 0.5, n_masked_images + 1)
    masked_counts = [int(N_TOKENS * ratios[i + 1]) for i in range(n_masked_images)]
    expected = sorted(masked_counts + [0] * (2 * batch - n_masked_images))
    assert counts == expected
    assert out["upperbound"] == sum(masked_counts)
    assert all(int(N_TOKENS * 0.1) <= c <= int(N_TOKENS * 0.5) for c in counts if c)


def test_mask_weights_indices_and_count_agree():
    out = collate(make_samples(6), mask_probability=0.7)
    masks = out["collated_masks"]
    assert torch.equal(out["mask_indices_list"], masks.flatten().nonzero().flatten())
    assert out["n_masked_patches"].tolist() == [int(masks.sum())] and out["n_masked_patches"].dtype == torch.long
    image_of_patch = out["mask_indices_list"] // N_TOKENS
    per_image = torch.zeros(masks.shape[0]).index_add_(0, image_of_patch, out["masks_weight"])
    masked = masks.any(-1)
    assert torch.allclose(per_image[masked], torch.ones(int(masked.sum())))
    assert torch.all(per_image[~masked] == 0)


def test_determinism_shift_local_batch_size_and_edge_cases():
    a, b = collate(make_samples(4), generator=3), collate(make_samples(4), generator=3)
    assert torch.equal(a["collated_masks"], b["collated_masks"])
    assert not torch.equal(a["collated_masks"], collate(make_samples(4), generator=4)["collated_masks"])
    shifted = collate(make_samples(4), random_circular_shift=True)
    assert sorted(shifted["collated_masks"].sum(-1).tolist()) == sorted(a["collated_masks"].sum(-1).tolist())
    assert collate(make_samples(4), local_batch_size=2)["collated_masks"].shape == (4, N_TOKENS)
    none = collate(make_samples(3), mask_probability=0.0)
    assert none["masks_weight"].numel() == 0 and none["upperbound"] == 0
    assert collate(make_samples(2, n_local=0))["collated_local_crops"] is None
    with pytest.raises(ConfigError, match="ibot.mask_ratio_min_max"):
        collate(make_samples(2), mask_ratio_tuple=(0.6, 0.2))
    with pytest.raises(ConfigError, match="mask_generator"):
        collate(make_samples(2), mask_generator=None)


def test_collates_real_augmentation_output():
    aug = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 2, global_crops_size=32, local_crops_size=16)
    image = np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)
    samples = [(aug(image, seed), 0) for seed in range(3)]
    out = collate_data_and_cast(samples, (0.1, 0.5), 0.5, torch.float32, n_tokens=4,
                                mask_generator=MaskingGenerator((2, 2), max_num_patches=2), generator=0)
    assert out["collated_global_crops"].shape == (6, 1, 32, 32) and out["collated_local_crops"].shape == (6, 1, 16, 16)
    assert out["collated_masks"].shape == (6, 4)
