"""Config reading for `DataAugmentationDINO.from_config`: the keys and their defaults.

Read from the run config (a mapping, e.g. `dinov3_us.configs.Config`); a missing key takes its
`ssl_default_config.yaml` default (`defaults`; the official values for `crops.*` / `student.*`), shown
here for reference, except `student.in_chans`, which is 1 where absent (the YAML's is 3):

- `crops.global_crops_scale` [0.32, 1.0], `crops.local_crops_scale` [0.05, 0.32],
  `crops.local_crops_number` 8, `crops.global_crops_size` 224, `crops.local_crops_size` 96,
  `crops.gram_teacher_crops_size` null, `crops.gram_teacher_no_distortions` false,
  `crops.localcrops_subset_of_globalcrops` false, `crops.share_color_jitter` false,
  `crops.horizontal_flips` true, `crops.rgb_mean` / `crops.rgb_std` (ImageNet);
- `student.patch_size` 16, `student.in_chans` (1 where absent);
- `augment.*`: `default_augment_config()` below (photometric, normalisation of 1-channel output,
  sector-aware crops and the ultrasound transforms of `ULTRASOUND_KEYS`).
"""

from __future__ import annotations

from collections.abc import Mapping

from dinov3_us.data.augment.defaults import AUGMENT_DEFAULTS, CROPS_DEFAULTS, PATCH_SIZE_DEFAULT
from dinov3_us.data.augment.ultrasound_augment import ULTRASOUND_DEFAULTS
from dinov3_us.errors import ConfigError

IMAGENET_DEFAULT_MEAN = tuple(CROPS_DEFAULTS["rgb_mean"])  # (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = tuple(CROPS_DEFAULTS["rgb_std"])  # (0.229, 0.224, 0.225)

# Photometric (DINOv3's, probabilities meaning "apply"; saturation and grayscale_p for 3-channel input
# only), 1-channel normalisation (gray_mean / gray_std: the means of crops.rgb_mean / rgb_std where
# the key is absent) and sector crops: every `augment:` key that is not the ultrasound transform's.
PHOTOMETRIC_DEFAULTS: dict = {k: v for k, v in AUGMENT_DEFAULTS.items() if k not in ULTRASOUND_DEFAULTS}


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
        "global_crops_scale": crops.get("global_crops_scale", CROPS_DEFAULTS["global_crops_scale"]),
        "local_crops_scale": crops.get("local_crops_scale", CROPS_DEFAULTS["local_crops_scale"]),
        "local_crops_number": crops.get("local_crops_number", CROPS_DEFAULTS["local_crops_number"]),
        "global_crops_size": crops.get("global_crops_size", CROPS_DEFAULTS["global_crops_size"]),
        "local_crops_size": crops.get("local_crops_size", CROPS_DEFAULTS["local_crops_size"]),
        "gram_teacher_crops_size": crops.get("gram_teacher_crops_size", CROPS_DEFAULTS["gram_teacher_crops_size"]),
        "gram_teacher_no_distortions": bool(
            crops.get("gram_teacher_no_distortions", CROPS_DEFAULTS["gram_teacher_no_distortions"])),
        "local_crops_subset_of_global_crops": bool(
            crops.get("localcrops_subset_of_globalcrops", CROPS_DEFAULTS["localcrops_subset_of_globalcrops"])),
        "patch_size": student.get("patch_size", PATCH_SIZE_DEFAULT),
        "share_color_jitter": bool(crops.get("share_color_jitter", CROPS_DEFAULTS["share_color_jitter"])),
        "horizontal_flips": bool(crops.get("horizontal_flips", CROPS_DEFAULTS["horizontal_flips"])),
        "mean": crops.get("rgb_mean", IMAGENET_DEFAULT_MEAN),
        "std": crops.get("rgb_std", IMAGENET_DEFAULT_STD),
        "in_chans": in_chans if in_chans is not None else student.get("in_chans", 1),
        "ultrasound": dict(augment),
    }
