"""DINOv3's generic transforms, without torchvision: random resized crop, flip, jitter, blur, solarize.

Each transform is a callable `t(img, generator=None)` on a float32 tensor [C, H, W] in [0, 1]
(C = 1 or 3) that returns a new tensor; `generator` is a numpy or torch generator, an int seed, or
None (see `dinov3_us.data.rng.as_rng`). The same generator state gives the same output.

Probabilities mean what they say: `p` is the probability of applying the transform. (The official
`GaussianBlur` passes `1 - p` to torchvision's `RandomApply`, so there `p=1.0` never blurs:
facebookresearch/dinov3 issue #286. Set the blur probabilities in the config to (0.0, 0.9, 0.5) to
reproduce the official effective behaviour.) Hue jitter is omitted: ultrasound has no hue, and
saturation / random grayscale act only on 3-channel input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dinov3_us.data.augment.image_ops import hflip, resized_crop, to_grayscale
from dinov3_us.data.checks import check_probability, check_range
from dinov3_us.data.rng import GeneratorLike, as_rng


class RandomResizedCrop:
    """Crop a random box (area fraction `scale`, aspect `ratio`) and resize it to `size`, bicubic.

    The box sampler follows torchvision's: 10 tries of area x aspect drawn uniformly (aspect in log
    space), then a centre crop clamped to `ratio` as the fallback.
    """

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), key: str = "scale"):
        self.size = int(size)
        self.scale = check_range(scale, key, 0.0, 1.0)
        self.ratio = check_range(ratio, "crops ratio", 1e-6)
        self.log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))

    def sample_shape(self, area: float, rng: np.random.Generator) -> tuple[int, int]:
        """(height, width) of a box of `area * U(scale)` pixels with a random aspect ratio."""
        target_area = area * rng.uniform(*self.scale)
        aspect = math.exp(rng.uniform(*self.log_ratio))
        return int(round(math.sqrt(target_area / aspect))), int(round(math.sqrt(target_area * aspect)))

    def sample_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """A box (top, left, h, w) inside a `height` x `width` image."""
        for _ in range(10):
            h, w = self.sample_shape(height * width, rng)
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        return center_box(height, width, self.ratio)

    def __call__(self, img: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
        box = self.sample_box(img.shape[-2], img.shape[-1], as_rng(generator))
        return resized_crop(img, box, self.size)  # [C, size, size]


def center_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """The largest centred box whose aspect ratio (w / h) lies within `ratio`."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


class RandomHorizontalFlip:
    """Mirror left-right with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = check_probability(p, "horizontal flip p")

    def __call__(self, img: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
        return hflip(img) if as_rng(generator).random() < self.p else img


def _blend(a: torch.Tensor, b: torch.Tensor | float, factor: float) -> torch.Tensor:
    """factor * a + (1 - factor) * b, clamped to [0, 1] (torchvision's blend)."""
    return (factor * a + (1.0 - factor) * b).clamp_(0.0, 1.0)


class ColorJitter:
    """With probability `p`: brightness, contrast (and saturation for RGB) factors in [1 - s, 1 + s], random order."""

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2, p: float = 0.8):
        self.strengths = {"brightness": float(brightness), "contrast": float(contrast), "saturation": float(saturation)}
        for key, value in self.strengths.items():
            check_range((0.0, value), f"augment.{key}", 0.0, 1.0)
        self.p = check_probability(p, "augment.color_jitter_p")

    def __call__(self, img: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
        rng = as_rng(generator)
        if rng.random() >= self.p:
            return img
        names = list(self.strengths)
        for index in rng.permutation(len(names)):
            name, s = names[index], self.strengths[names[index]]
            factor = float(rng.uniform(1.0 - s, 1.0 + s))
            if name == "brightness":
                img = _blend(img, 0.0, factor)
            elif name == "contrast":
                img = _blend(img, float(to_grayscale(img).mean()), factor)
            elif img.shape[0] == 3:  # saturation: meaningless for one channel
                img = _blend(img, to_grayscale(img), factor)
        return img


class RandomGrayscale:
    """With probability `p`, replace RGB by its luma (kept 3 channels); 1-channel input is unchanged."""

    def __init__(self, p: float = 0.2):
        self.p = check_probability(p, "augment.grayscale_p")

    def __call__(self, img: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
        if as_rng(generator).random() >= self.p or img.shape[0] == 1:
            return img
        return to_grayscale(img).expand(3, -1, -1).contiguous()


def gaussian_blur(img: torch.Tensor, sigma: float, kernel_size: int = 9) -> torch.Tensor:
    """Separable Gaussian blur of [C, H, W] (reflect padding, as torchvision)."""
    half = kernel_size // 2
    x = torch.arange(kernel_size, dtype=img.dtype) - half
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()  # [k]
    c = img.shape[0]
    pad_mode = "reflect" if min(img.shape[-2:]) > half else "replicate"
    out = F.pad(img[None], (half, half, half, half), mode=pad_mode)  # [1, C, H + 2h, W + 2h]
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]  # [C, H, W]


class GaussianBlur:
    """With probability `p`, blur with sigma ~ U[radius_min, radius_max] and a 9-pixel kernel (DINOv3's)."""

    def __init__(self, *, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0, kernel_size: int = 9):
        self.p = check_probability(p, "blur p")
        self.sigma = check_range((radius_min, radius_max), "augment.blur_sigma", 1e-3)
        self.kernel_size = int(kernel_size)

    def __call__(self, img: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
        rng = as_rng(generator)
        if rng.random() >= self.p:
            return img
        return gaussian_blur(img, float(rng.uniform(*self.sigma)), self.kernel_size)


class RandomSolarize:
    """With probability `p`, invert every value >= `threshold` (0.5 = torchvision's 128 on 8 bits)."""

    def __init__(self, threshold: float = 0.5, p: float = 0.2):
        self.threshold = float(threshold)
        self.p = check_probability(p, "solarize p")

    def __call__(self, img: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
        if as_rng(generator).random() >= self.p:
            return img
        return torch.where(img >= self.threshold, 1.0 - img, img)
