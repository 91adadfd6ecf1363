"""Config reading for `DataAugmentationDINO.from_config`: the keys, their defaults and their checks.

Read from the run config (a mapping, e.g. `dinov3_us.configs.Config`); a missing key takes the
default shown (the official `ssl_default_config.yaml` value for `crops.*` / `student.*`):

- `crops.global_crops_scale` [0.32, 1.0], `crops.local_crops_scale` [0.05, 0.32],
  `crops.local_crops_number` 8, `crops.global_crops_size` 224, `crops.local_crops_size` 96,
  `crops.gram_teacher_crops_size` null, `crops.gram_teacher_no_distortions` false,
  `crops.localcrops_subset_of_globalcrops` false, `crops.share_color_jitter` false,
  `crops.horizontal_flips` true, `crops.rgb_mean` / `crops.rgb_std` (ImageNet);
- `student.patch_size` 16, `student.in_chans` (1 where absent);
- `augment.*`: `default_augment_config()` below (photometric, normalisation of 1-channel output,
  sector-aware crops and the ultrasound transforms of `ULTRASOUND_DEFAULTS`).
"""

from __future__ import annotations

from collections.abc import Mapping

from dinov3_us.data.ultrasound_augment import ULTRASOUND_DEFAULTS
from dinov3_us.errors import ConfigError

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# Photometric (DINOv3's, probabilities meaning "apply"), 1-channel normalisation and sector crops.
PHOTOMETRIC_DEFAULTS: dict = {
    "color_jitter_p": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.2,  # 3-channel input only; hue jitter is not used
    "grayscale_p": 0.2,  # 3-channel input only
    "blur_p_global1": 1.0,  # official effective values (issue #286): 0.0 / 0.9 / 0.5
    "blur_p_global2": 0.1,
    "blur_p_local": 0.5,
    "blur_sigma": [0.1, 2.0],
    "solarize_p": 0.2,  # second global crop only
    "solarize_threshold": 0.5,
    "gray_mean": 0.449,  # 1-channel output: mean of crops.rgb_mean where this key is absent
    "gray_std": 0.226,  # 1-channel output: mean of crops.rgb_std where this key is absent
    "sector_crop": True,  # crops inside the estimated scan sector
    "sector_threshold": 0.015,  # mean intensity (0-1) above which a smoothed cell is "in the sector"
    "sector_min_inside": 0.9,  # accept a crop box once this fraction of it is in the sector
    "sector_max_tries": 20,  # boxes drawn before keeping the best one seen
}


def default_augment_config() -> dict:
    """Every key of the `augment:` config section with its default (a fresh dict)."""
    merged = {**PHOTOMETRIC_DEFAULTS, **ULTRASOUND_DEFAULTS}
    return {k: list(v) if isinstance(v, list) else v for k, v in merged.items()}


def section(cfg: Mapping, name: str) -> Mapping:
    """`cfg[name]` as a mapping ({} where absent)."""
    value = cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, None)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a section (mapping), got {type(value).__name__}")
    return value


def positive_int(value, key: str, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`, else a ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def check_stats(values, key: str, length: int) -> tuple[float, ...]:
    """A mean/std list of `length` numbers (std entries must be > 0 where `key` ends in std)."""
    try:
        stats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {length} numbers, got {values!r}") from None
    if len(stats) != length or (key.endswith("std") and min(stats) <= 0):
        raise ConfigError(f"{key}: expected {length} numbers{' > 0' if key.endswith('std') else ''}, got {values!r}")
    return stats


def split_augment(augment: Mapping | None, prefix: str = "augment") -> tuple[dict, dict]:
    """Split an `augment` mapping into (photometric/sector settings with defaults, ultrasound overrides)."""
    augment = dict(augment or {})
    unknown = sorted(set(augment) - set(PHOTOMETRIC_DEFAULTS) - set(ULTRASOUND_DEFAULTS))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; valid keys: {sorted(default_augment_config())}")
    photometric = {k: augment.get(k, v) for k, v in PHOTOMETRIC_DEFAULTS.items()}
    ultrasound = {k: v for k, v in augment.items() if k in ULTRASOUND_DEFAULTS}
    return photometric, ultrasound


def kwargs_from_config(cfg: Mapping, in_chans: int | None = None) -> dict:
    """Constructor arguments of `DataAugmentationDINO` read from `cfg` (keys in the module docstring)."""
    crops, student, augment = section(cfg, "crops"), section(cfg, "student"), section(cfg, "augment")
    return {
        "global_crops_scale": crops.get("global_crops_scale", (0.32, 1.0)),
        "local_crops_scale": crops.get("local_crops_scale", (0.05, 0.32)),
        "local_crops_number": crops.get("local_crops_number", 8),
        "global_crops_size": crops.get("global_crops_size", 224),
        "local_crops_size": crops.get("local_crops_size", 96),
        "gram_teacher_crops_size": crops.get("gram_teacher_crops_size"),
        "gram_teacher_no_distortions": bool(crops.get("gram_teacher_no_distortions", False)),
        "local_crops_subset_of_global_crops": bool(crops.get("localcrops_subset_of_globalcrops", False)),
        "patch_size": student.get("patch_size", 16),
        "share_color_jitter": bool(crops.get("share_color_jitter", False)),
        "horizontal_flips": bool(crops.get("horizontal_flips", True)),
        "mean": crops.get("rgb_mean", IMAGENET_DEFAULT_MEAN),
        "std": crops.get("rgb_std", IMAGENET_DEFAULT_STD),
        "in_chans": in_chans if in_chans is not None else student.get("in_chans", 1),
        "ultrasound": dict(augment),
    }
