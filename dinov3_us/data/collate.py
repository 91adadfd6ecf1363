"""Batch collation with iBOT masks: `collate_data_and_cast` (the official name, arguments and keys).

Input: a list of dataset samples, each `(crops_dict, target)` as the official dataset yields (a bare
`crops_dict` is accepted too), where `crops_dict` is the output of `DataAugmentationDINO`.

Masks: of the B = n_global_crops x batch global crops, `int(B * mask_probability)` are masked; the
i-th of them gets `int(n_tokens * r_i)` patches with r_i = linspace(min, max, n + 1)[i + 1] (the
ratios spread evenly over [min, max]), the others none; the list is then shuffled. Randomness comes
from `generator` (see `dinov3_us.data.rng.as_rng`; None: torch's global RNG, reseeded per worker).
"""

from __future__ import annotations

import torch

from dinov3_us.data.checks import check_probability, check_range
from dinov3_us.data.rng import GeneratorLike, as_rng
from dinov3_us.errors import ConfigError


def _crops(sample) -> dict:
    """The crops dict of a sample `(crops, target)` or of a bare crops dict."""
    return sample[0] if isinstance(sample, (tuple, list)) else sample


def collate_data_and_cast(
    samples_list,
    mask_ratio_tuple,
    mask_probability: float,
    dtype: torch.dtype,
    n_tokens: int | None = None,
    mask_generator=None,
    random_circular_shift: bool = False,
    local_batch_size: int | None = None,
    generator: GeneratorLike = None,
    global_batch_size: int | None = None,
) -> dict:
    """Stack the crops of a batch (crop-major) and draw its iBOT masks.

    Returns `collated_global_crops` [n_g * B, C, G, G] and `collated_local_crops` [n_l * B, C, L, L]
    (None without local crops) cast to `dtype`; `collated_masks` bool [n_g * B, n_tokens];
    `mask_indices_list` (flat indices of masked patches); `masks_weight` [n_masked] (1 / number of
    masked patches of its image, so each masked image sums to 1); `upperbound` (sum of the requested
    mask sizes); `n_masked_patches` long [1]; `global_batch_size` (the argument; default: the number of samples);
    `collated_gram_teacher_crops` when the samples have Gram-teacher crops. `local_batch_size` sets
    B for the masks when it differs from the number of samples (multi-distillation), as the official.
    """
    if not samples_list:
        raise ConfigError("samples_list: expected at least one sample")
    if mask_generator is None:
        raise ConfigError("mask_generator: a MaskingGenerator is required")
    lo, hi = check_range(mask_ratio_tuple, "ibot.mask_ratio_min_max", 0.0, 1.0)
    mask_probability = check_probability(mask_probability, "ibot.mask_sample_probability")
    rng = as_rng(generator)
    dicts = [_crops(s) for s in samples_list]
    n_global, n_local = len(dicts[0]["global_crops"]), len(dicts[0]["local_crops"])

    def stack(key: str, count: int) -> torch.Tensor:
        return torch.stack([d[key][i] for i in range(count) for d in dicts])  # [count * B, C, H, W]

    collated_global = stack("global_crops", n_global)
    collated_local = stack("local_crops", n_local) if n_local else None
    collated_gram = stack("gram_teacher_crops", n_global) if "gram_teacher_crops" in dicts[0] else None

    n_images = n_global * local_batch_size if local_batch_size is not None else len(collated_global)
    n_tokens = mask_generator.num_patches if n_tokens is None else int(n_tokens)
    n_samples_masked = int(n_images * mask_probability)
    ratios = torch.linspace(lo, hi, n_samples_masked + 1)  # float32, as the official
    upperbound, masks = 0, []
    for i in range(n_samples_masked):
        n_patches = int(n_tokens * ratios[i + 1])
        mask = torch.from_numpy(mask_generator(n_patches, generator=rng))  # [h, w] bool
        if random_circular_shift:
            shifts = (int(rng.integers(0, mask.shape[0])), int(rng.integers(0, mask.shape[1])))
            mask = torch.roll(mask, shifts, (0, 1))
        masks.append(mask)
        upperbound += n_patches
    masks += [torch.from_numpy(mask_generator(0, generator=rng)) for _ in range(n_samples_masked, n_images)]
    masks = [masks[i] for i in rng.permutation(len(masks))]

    collated_masks = torch.stack(masks).flatten(1)  # [n_images, n_tokens]
    mask_indices_list = collated_masks.flatten().nonzero().flatten()
    per_image = 1.0 / collated_masks.sum(-1).clamp(min=1.0)  # [n_images]
    masks_weight = per_image.unsqueeze(-1).expand_as(collated_masks)[collated_masks]  # [n_masked]

    out = {
        "collated_global_crops": collated_global.to(dtype),
        "collated_local_crops": collated_local.to(dtype) if collated_local is not None else None,
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "upperbound": upperbound,
        "n_masked_patches": torch.full((1,), fill_value=mask_indices_list.shape[0], dtype=torch.long),
        "global_batch_size": int(global_batch_size) if global_batch_size is not None else len(dicts),
    }
    if collated_gram is not None:
        out["collated_gram_teacher_crops"] = collated_gram.to(dtype)
    return out

