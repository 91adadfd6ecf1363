"""The scan sector (the fan of a curvilinear / phased probe) and crops that stay inside it.

An ultrasound frame is a bright sector on black background (plus text, calipers and scale bars).
Random resized crops taken over the whole frame often land mostly on black; `SectorResizedCrop`
samples boxes whose content lies mostly inside the sector estimated by `Sector.from_image`:

1. smooth the grayscale frame by area-averaging it down to `work_size` pixels on its long side
   (speckle and thin dark gaps vanish), threshold it at `threshold`;
2. keep the largest 4-connected component (drops text and scale bars);
3. fill the holes that the fan's convex shape implies: a pixel is in the sector when it lies between
   on-pixels both in its row and in its column (anechoic fluid inside the fan is kept);
4. upsample to full resolution (nearest). Frames where that finds < 5% of the area fall back to the
   whole frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from dinov3_us.data.augment.image_ops import resized_crop, to_grayscale
from dinov3_us.data.augment.transforms import RandomResizedCrop, center_box
from dinov3_us.data.checks import check_probability
from dinov3_us.data.rng import GeneratorLike, as_rng


def _largest_component(on: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a small boolean map [h, w]; the first in raster order on a tie."""
    labels, count = ndimage.label(on)  # 4-connectivity (the default cross), labels in raster order
    if count == 0:
        return on
    return labels == 1 + int(np.bincount(labels.ravel())[1:].argmax())


def _fill_convex(on: np.ndarray) -> np.ndarray:
    """Pixels between on-pixels both along their row and along their column."""
    rows = np.maximum.accumulate(on, axis=1) & np.maximum.accumulate(on[:, ::-1], axis=1)[:, ::-1]
    cols = np.maximum.accumulate(on, axis=0) & np.maximum.accumulate(on[::-1], axis=0)[::-1]
    return rows & cols


@dataclass
class Sector:
    """A boolean sector mask [H, W], its summed-area table and bounding box (top, left, bottom, right)."""

    mask: np.ndarray
    integral: np.ndarray
    bbox: tuple[int, int, int, int]

    @classmethod
    def full(cls, height: int, width: int) -> Sector:
        """The whole frame as the sector (used when sector-aware crops are off)."""
        return cls.from_mask(np.ones((height, width), dtype=bool))

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Sector:
        """Build from a boolean mask [H, W] (an empty mask means the whole frame)."""
        mask = mask if mask.any() else np.ones_like(mask, dtype=bool)
        integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
        integral[1:, 1:] = mask.cumsum(0).cumsum(1)
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        return cls(mask, integral, (int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1))

    @classmethod
    def from_image(cls, img: torch.Tensor, threshold: float = 0.015, work_size: int = 64) -> Sector:
        """Estimate the sector of a [C, H, W] frame in [0, 1] (see the module docstring)."""
        height, width = img.shape[-2:]
        factor = min(1.0, work_size / max(height, width))
        small_hw = (max(1, round(height * factor)), max(1, round(width * factor)))
        small = F.adaptive_avg_pool2d(to_grayscale(img)[None], small_hw)[0, 0].numpy()  # [h, w]
        on = _fill_convex(_largest_component(small > threshold))
        if on.mean() < 0.05:
            return cls.full(height, width)
        rows = np.minimum((np.arange(height) * small_hw[0]) // height, small_hw[0] - 1)
        cols = np.minimum((np.arange(width) * small_hw[1]) // width, small_hw[1] - 1)
        return cls.from_mask(on[rows][:, cols])

    @property
    def area(self) -> int:
        """Number of pixels in the sector."""
        return int(self.integral[-1, -1])

    def inside_fraction(self, box: tuple[int, int, int, int]) -> float:
        """Fraction of the pixels of `box = (top, left, h, w)` that lie in the sector."""
        t, left, h, w = box
        s = self.integral
        inside = s[t + h, left + w] - s[t, left + w] - s[t + h, left] + s[t, left]
        return float(inside) / float(h * w)

    def depth_of_rows(self, box: tuple[int, int, int, int], out_rows: int) -> np.ndarray:
        """Normalised depth in [0, 1] (0 = sector top, the probe face) of each of `out_rows` rows of `box`."""
        top, _, h, _ = box
        rows = top + (np.arange(out_rows) + 0.5) * h / out_rows
        s_top, _, s_bottom, _ = self.bbox
        return np.clip((rows - s_top) / max(1, s_bottom - s_top), 0.0, 1.0).astype(np.float32)  # [out_rows]


class SectorResizedCrop(RandomResizedCrop):
    """Random resized crop whose box lies mostly inside the sector.

    `scale` is a fraction of the sector's area (not of the frame's). Up to `max_tries` boxes are
    drawn with their top-left corner placed so that the box overlaps the sector's bounding box; the
    first with at least `min_inside` of its pixels in the sector is kept, else the best one seen.
    """

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), min_inside=0.9, max_tries=20, key="scale"):
        super().__init__(size, scale, ratio, key)
        self.min_inside = check_probability(min_inside, "augment.sector_min_inside")
        self.max_tries = max(1, int(max_tries))

    def sample_sector_box(self, sector: Sector, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """A box (top, left, h, w) in the frame of `sector`, mostly inside it."""
        height, width = sector.mask.shape
        b_top, b_left, b_bottom, b_right = sector.bbox
        best, best_fraction = None, -1.0
        for _ in range(self.max_tries):
            h, w = self.sample_shape(sector.area, rng)
            if not (0 < h <= height and 0 < w <= width):
                continue
            top = int(rng.integers(min(b_top, max(0, b_bottom - h)), min(height - h, max(b_top, b_bottom - h)) + 1))
            left = int(rng.integers(min(b_left, max(0, b_right - w)), min(width - w, max(b_left, b_right - w)) + 1))
            fraction = sector.inside_fraction((top, left, h, w))
            if fraction >= self.min_inside:
                return top, left, h, w
            if fraction > best_fraction:
                best, best_fraction = (top, left, h, w), fraction
        return best if best is not None else center_box(height, width, self.ratio)

    def __call__(self, img: torch.Tensor, generator: GeneratorLike = None, sector: Sector | None = None):
        """Crop [C, H, W] inside `sector` (estimated from `img` when None) -> [C, size, size]."""
        sector = Sector.from_image(img) if sector is None else sector
        return resized_crop(img, self.sample_sector_box(sector, as_rng(generator)), self.size)
