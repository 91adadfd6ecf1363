"""The pretraining data pipeline pieces built from a run config: multi-crop transform and masking collate."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from dinov3_us.data.augment import DataAugmentationDINO
from dinov3_us.data.collate import collate_data_and_cast
from dinov3_us.data.masking import MaskingGenerator
from dinov3_us.dtypes import DTYPES


def build_ssl_transform(cfg: Mapping) -> DataAugmentationDINO:
    """`DataAugmentationDINO` from `crops.*`, `augment.*` and `student.in_chans`."""
    return DataAugmentationDINO.from_config(cfg)


def build_collate_fn(cfg: Mapping, dtype: str = "fp32", generator=None):
    """`collate_data_and_cast` bound to the run's masking settings (iBOT ratio, probability, patch grid).

    Args:
        cfg: the run config.
        dtype: crop dtype after collation (fp32 | fp16 | bf16).
        generator: seed or generator for the masks (None: torch's global RNG, reseeded per worker).
    """
    side = cfg["crops"]["global_crops_size"] // cfg["student"]["patch_size"]
    mask_generator = MaskingGenerator(input_size=(side, side), max_num_patches=0.5 * side * side)
    return partial(
        collate_data_and_cast,
        mask_ratio_tuple=tuple(cfg["ibot"]["mask_ratio_min_max"]),
        mask_probability=cfg["ibot"]["mask_sample_probability"],
        dtype=DTYPES[dtype],
        n_tokens=side * side,
        mask_generator=mask_generator,
        random_circular_shift=cfg["ibot"]["mask_random_circular_shift"],
        generator=generator,
    )
