"""Augmentation defaults, read from the one source: `dinov3_us/configs/ssl_default_config.yaml`.

Its `augment:` section gives every augmentation key's default, its `crops:` section the multi-crop
defaults and `student.patch_size` the patch size; `DataAugmentationDINO` and `config.kwargs_from_config`
take their defaults from here, so a training run and a bare `DataAugmentationDINO.from_config({})`
agree with the YAML by construction.
"""

from __future__ import annotations

import yaml

from dinov3_us.configs import DEFAULT_CONFIG_PATH

_DEFAULTS = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())

AUGMENT_DEFAULTS: dict = _DEFAULTS["augment"]  # key -> default of the `augment:` section, in YAML order
CROPS_DEFAULTS: dict = _DEFAULTS["crops"]  # key -> default of the `crops:` section
PATCH_SIZE_DEFAULT: int = _DEFAULTS["student"]["patch_size"]
