"""DINOv3 multi-crop augmentation for ultrasound: `DataAugmentationDINO` (the official name).

Per image: 2 global crops and `local_crops_number` local crops, each a random resized crop (bicubic,
aspect 3/4-4/3, inside the scan sector when `augment.sector_crop`), a horizontal flip (p=0.5 when
`crops.horizontal_flips`), the ultrasound transforms (shadow, depth attenuation, speckle, TGC,
gamma; `dinov3_us.data.augment.ultrasound_augment`), colour jitter (p=0.8; brightness/contrast, plus
saturation and random grayscale for RGB), Gaussian blur (global 1: p=1.0, global 2: p=0.1, local:
p=0.5) and solarize (global 2: p=0.2), then normalisation. Output, as the official:
`global_crops` [2 x [C, G, G]], `global_crops_teacher` (same tensors unless
`teacher_no_color_jitter`), `local_crops` [n x [C, L, L]], `offsets`, and `gram_teacher_crops`
[2 x [C, S, S]] when `gram_teacher_crops_size` is set.

Channels: grayscale stays 1-channel (C = 1) unless `in_chans=3`, which repeats it after the
augmentations (RGB input with `in_chans=1` is converted to luma). 1-channel output is normalised
with `augment.gray_mean` / `augment.gray_std` (default: the means of `crops.rgb_mean` /
`crops.rgb_std`, 0.449 / 0.226 for ImageNet's); 3-channel output with `rgb_mean` / `rgb_std`.

Config keys: `dinov3_us.data.augment.config`; defaults (keyword defaults here included): the
`crops:` / `augment:` sections of `ssl_default_config.yaml` (`dinov3_us.data.augment.defaults`).
Reproducibility: `aug(image, generator)` with the same seed gives the same crops; `generator=None`
draws from torch's global RNG (seeded per DataLoader worker).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from dinov3_us.data.augment.config import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, kwargs_from_config, split_augment
from dinov3_us.data.augment.defaults import CROPS_DEFAULTS, PATCH_SIZE_DEFAULT
from dinov3_us.data.augment.image_ops import hflip, match_channels, normalize, resize, resized_crop, to_float_tensor
from dinov3_us.data.augment.sector import Sector, SectorResizedCrop
from dinov3_us.data.augment.transforms import ColorJitter, GaussianBlur, RandomGrayscale, RandomSolarize
from dinov3_us.data.augment.ultrasound_augment import UltrasoundAugment
from dinov3_us.data.checks import check_range, check_stats, positive_int
from dinov3_us.data.rng import GeneratorLike, as_rng
from dinov3_us.errors import ConfigError


def _resample(depth: np.ndarray, size: int) -> np.ndarray:
    """Per-row depths [n] resampled to `size` rows (the crop was resized)."""
    if len(depth) == size:
        return depth
    return np.interp(np.linspace(0, 1, size), np.linspace(0, 1, len(depth)), depth).astype(np.float32)


class DataAugmentationDINO:
    """Multi-crop DINOv3 augmentation with ultrasound transforms (see the module docstring).

    Args:
        global_crops_scale, local_crops_scale, local_crops_number, global_crops_size, local_crops_size,
        gram_teacher_crops_size, gram_teacher_no_distortions, teacher_no_color_jitter,
        local_crops_subset_of_global_crops, patch_size, share_color_jitter, horizontal_flips, mean, std:
            as the official (`crops.*`; `mean` / `std` are `crops.rgb_mean` / `crops.rgb_std`).
        in_chans: output channels, 1 (grayscale kept) or 3 (repeated); `student.in_chans`.
        ultrasound: the `augment:` section, any keys of `default_augment_config()` (missing ones take
            their defaults; `gray_mean` / `gray_std` default to the means of `mean` / `std`).
    """

    def __init__(
        self,
        global_crops_scale,
        local_crops_scale,
        local_crops_number: int,
        global_crops_size: int = CROPS_DEFAULTS["global_crops_size"],
        local_crops_size: int = CROPS_DEFAULTS["local_crops_size"],
        gram_teacher_crops_size: int | None = None,
        gram_teacher_no_distortions: bool = False,
        teacher_no_color_jitter: bool = False,
        local_crops_subset_of_global_crops: bool = False,
        patch_size: int = PATCH_SIZE_DEFAULT,
        share_color_jitter: bool = False,
        horizontal_flips: bool = True,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        in_chans: int = 1,
        ultrasound: Mapping | None = None,
    ):
        if in_chans not in (1, 3):
            raise ConfigError(f"student.in_chans: expected 1 or 3, got {in_chans!r}")
        self.in_chans = in_chans
        self.local_crops_number = positive_int(local_crops_number, "crops.local_crops_number", 0)
        self.global_crops_size = positive_int(global_crops_size, "crops.global_crops_size")
        self.local_crops_size = positive_int(local_crops_size, "crops.local_crops_size")
        self.gram_teacher_crops_size = gram_teacher_crops_size
        if gram_teacher_crops_size is not None:
            positive_int(gram_teacher_crops_size, "crops.gram_teacher_crops_size")
        self.gram_teacher_no_distortions = gram_teacher_no_distortions
        self.teacher_no_color_jitter = teacher_no_color_jitter
        self.local_crops_subset_of_global_crops = local_crops_subset_of_global_crops
        self.patch_size = positive_int(patch_size, "student.patch_size")
        if local_crops_subset_of_global_crops and (local_crops_size > global_crops_size or local_crops_number % 2):
            raise ConfigError("crops.localcrops_subset_of_globalcrops: needs an even local_crops_number and "
                              f"local_crops_size <= global_crops_size, got {local_crops_number}, {local_crops_size}")
        self.share_color_jitter = share_color_jitter
        self.flip_p = 0.5 if horizontal_flips else 0.0
        self.rgb_mean, self.rgb_std = check_stats(mean, "crops.rgb_mean", 3), check_stats(std, "crops.rgb_std", 3)
        augment = {"gray_mean": sum(self.rgb_mean) / 3, "gray_std": sum(self.rgb_std) / 3, **dict(ultrasound or {})}
        photo, us_params = split_augment(augment)
        gray_mean = check_stats([photo["gray_mean"]], "augment.gray_mean", 1)
        gray_std = check_stats([photo["gray_std"]], "augment.gray_std", 1)
        self.out_mean, self.out_std = (gray_mean, gray_std) if in_chans == 1 else (self.rgb_mean, self.rgb_std)
        self.ultrasound = UltrasoundAugment(us_params)
        self.sector_crop, self.sector_threshold = bool(photo["sector_crop"]), float(photo["sector_threshold"])
        global_max = max(self.global_crops_size, gram_teacher_crops_size or 0)
        crop_args = {"min_inside": photo["sector_min_inside"], "max_tries": photo["sector_max_tries"]}
        self.global_crop = SectorResizedCrop(global_max, global_crops_scale, key="crops.global_crops_scale",
                                             **crop_args)
        self.local_crop = SectorResizedCrop(self.local_crops_size, local_crops_scale, key="crops.local_crops_scale",
                                            **crop_args)
        jitter = (photo["brightness"], photo["contrast"], photo["saturation"], photo["color_jitter_p"])
        self.color_jitter = ColorJitter(*jitter)
        self.grayscale = RandomGrayscale(photo["grayscale_p"])
        sigma = check_range(photo["blur_sigma"], "augment.blur_sigma", 1e-3)
        self.blur = {name: GaussianBlur(p=photo[f"blur_p_{name}"], radius_min=sigma[0], radius_max=sigma[1])
                     for name in ("global1", "global2", "local")}
        self.solarize = RandomSolarize(photo["solarize_threshold"], photo["solarize_p"])

    @classmethod
    def from_config(cls, cfg: Mapping, in_chans: int | None = None) -> DataAugmentationDINO:
        """Build from a run config with `crops`, `augment` (and `student`) sections (see `config`)."""
        return cls(**kwargs_from_config(cfg, in_chans))

    def _finish(self, img: torch.Tensor) -> torch.Tensor:
        """[C', H, W] in [0, 1] -> normalised [in_chans, H, W]."""
        img = match_channels(img, self.in_chans)
        return normalize(img, self.out_mean, self.out_std)

    def _distort(self, img, rng, kind: str, depth: np.ndarray, tilt: float) -> torch.Tensor:
        """Photometric + ultrasound transforms of one crop; `kind` in global1 / global2 / local."""
        img = self.ultrasound(img, depth, rng, beam_tilt=tilt)
        if not self.share_color_jitter:
            img = self.grayscale(self.color_jitter(img, rng), rng)
        img = self.blur[kind](img, rng)
        return self.solarize(img, rng) if kind == "global2" else img

    def _crop(self, img, sector: Sector, cropper: SectorResizedCrop, rng) -> tuple[torch.Tensor, np.ndarray, float]:
        """One geometric crop: ([C, S, S] crop, per-row depth [S], beam tilt in output pixels)."""
        box = cropper.sample_sector_box(sector, rng)  # (top, left, h, w) in the frame
        size = cropper.size
        crop = resized_crop(img, box, size)
        s_top, s_left, s_bottom, s_right = sector.bbox
        lateral = (box[1] + box[3] / 2 - (s_left + s_right) / 2) / max(1.0, (s_right - s_left) / 2)
        tilt = 0.6 * float(np.clip(lateral, -1.0, 1.0)) * (box[2] / size) / (box[3] / size)
        if rng.random() < self.flip_p:
            crop, tilt = hflip(crop), -tilt
        return crop, sector.depth_of_rows(box, size), tilt

    def __call__(self, image, generator: GeneratorLike = None) -> dict:
        """Augment one image (PIL / numpy / tensor) into the official output dict of crops."""
        rng = as_rng(generator)
        img = to_float_tensor(image)  # [C0, H, W]
        if self.in_chans == 1:
            img = match_channels(img, 1)
        sector = Sector.from_image(img, self.sector_threshold) if self.sector_crop else Sector.full(*img.shape[-2:])
        if self.share_color_jitter:
            img = self.grayscale(self.color_jitter(img, rng), rng)
        g_size, gram_size, output = self.global_crops_size, self.gram_teacher_crops_size, {"weak_flag": True}
        bases, globals_, grams = [], [], []
        for kind in ("global1", "global2"):
            base, depth, tilt = self._crop(img, sector, self.global_crop, rng)  # [C, Gmax, Gmax], [Gmax]
            if gram_size is not None and self.gram_teacher_no_distortions:
                grams.append(self._finish(resize(base, gram_size)))  # resize first, distort at G
                base, depth = resize(base, g_size), _resample(depth, g_size)
            distorted = self._distort(base, rng, kind, depth, tilt)
            if gram_size is not None and not self.gram_teacher_no_distortions:
                grams.append(self._finish(resize(distorted, gram_size)))  # shared distortions
            bases.append((resize(base, g_size), _resample(depth, g_size), tilt))
            globals_.append(self._finish(resize(distorted, g_size)))  # [C, G, G]
        output["global_crops"] = globals_
        teacher = [self._finish(b) for b, _, _ in bases] if self.teacher_no_color_jitter else globals_
        output["global_crops_teacher"] = teacher
        if grams:
            output["gram_teacher_crops"] = grams
        output["local_crops"], output["offsets"] = self._local_crops(img, sector, bases, rng)
        return output

    def _local_crops(self, img, sector: Sector, bases: list, rng) -> tuple[list, list | tuple]:
        """Local crops [n x [C, L, L]] and their offsets (patch-aligned, when taken from the global crops)."""
        if not self.local_crops_subset_of_global_crops:
            crops = []
            for _ in range(self.local_crops_number):
                crop, depth, tilt = self._crop(img, sector, self.local_crop, rng)
                crops.append(self._finish(self._distort(crop, rng, "local", depth, tilt)))
            return crops, ()
        crops, offsets, ls, steps = [], [], self.local_crops_size, (self.global_crops_size - self.local_crops_size)
        for base, depth, tilt in bases:
            for _ in range(self.local_crops_number // 2):
                full = self._finish(self._distort(base, rng, "local", depth, tilt))  # [C, G, G]
                rx, ry = (rng.integers(0, max(1, steps // self.patch_size), 2) * self.patch_size).tolist()
                crops.append(full[:, rx : rx + ls, ry : ry + ls])
                offsets.append((rx, ry))
        return crops, offsets
