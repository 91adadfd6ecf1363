"""Augmentation defaults come from `ssl_default_config.yaml`: the code's defaults agree with it."""

from __future__ import annotations

import inspect

import yaml

from dinov3_us.configs import DEFAULT_CONFIG_PATH, get_default_config
from dinov3_us.data.augment import DataAugmentationDINO, default_augment_config
from dinov3_us.data.augment.ultrasound_augment import ULTRASOUND_DEFAULTS, UltrasoundAugment

YAML = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())


def test_augment_section_is_the_default_augment_config():
    assert default_augment_config() == YAML["augment"]
    assert list(default_augment_config()) == list(YAML["augment"])
    assert set(ULTRASOUND_DEFAULTS) < set(YAML["augment"])


def test_constructor_and_from_config_defaults_match_the_yaml():
    params = inspect.signature(DataAugmentationDINO).parameters
    crops = YAML["crops"]
    assert params["global_crops_size"].default == crops["global_crops_size"]
    assert params["local_crops_size"].default == crops["local_crops_size"]
    assert params["patch_size"].default == YAML["student"]["patch_size"]
    assert list(params["mean"].default) == crops["rgb_mean"] and list(params["std"].default) == crops["rgb_std"]
    bare = DataAugmentationDINO.from_config({})
    full = DataAugmentationDINO.from_config(get_default_config(), in_chans=1)
    for attr in ("global_crops_size", "local_crops_size", "local_crops_number", "patch_size", "flip_p",
                 "gram_teacher_crops_size", "rgb_mean", "rgb_std", "sector_crop", "sector_threshold"):
        assert getattr(bare, attr) == getattr(full, attr), attr
    assert bare.global_crop.scale == full.global_crop.scale == tuple(crops["global_crops_scale"])
    assert bare.local_crop.scale == full.local_crop.scale == tuple(crops["local_crops_scale"])
    assert vars(bare.ultrasound) == vars(full.ultrasound) == vars(UltrasoundAugment())
    assert bare.ultrasound.p["speckle_p"] == YAML["augment"]["speckle_p"]
