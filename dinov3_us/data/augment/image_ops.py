"""Deterministic image operations on float tensors: conversion, crop-and-resize, flip, normalise.

The augmentation path works on `float32` tensors of shape [C, H, W] with values in [0, 1]
(C = 1 for grayscale, 3 for RGB). These helpers hold no randomness: random transforms sample their
parameters and call them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dinov3_us.errors import DataError

# ITU-R 601 luma weights, as PIL's "L" conversion uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_float_tensor(image) -> torch.Tensor:
    """PIL image, numpy array ([H, W] / [H, W, C]) or tensor ([C, H, W]) -> float32 [C, H, W] in [0, 1].

    8-bit data are divided by 255, 16-bit by 65535; float input is taken to be in [0, 1] already.
    An alpha channel is dropped; C ends as 1 (grayscale) or 3 (RGB).
    """
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float32) / 65535.0
        else:
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA") else "L")
            array = np.asarray(image)
        tensor = torch.from_numpy(np.array(array, copy=True))
        tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)  # [C, H, W]
    elif isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.array(image, copy=True))
        tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)  # [H, W, C] -> [C, H, W]
    elif isinstance(image, torch.Tensor):
        tensor = image[None] if image.ndim == 2 else image
    else:
        raise DataError(f"image: expected a PIL image, numpy array or tensor, got {type(image)!r}")
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 2, 3, 4):
        raise DataError(f"image: expected [H, W] or channels 1-4, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] in (2, 4):  # drop alpha: LA -> L, RGBA -> RGB
        tensor = tensor[: tensor.shape[0] - 1]
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    if not tensor.is_floating_point():
        return tensor.float().div_(65535.0).clamp_(0.0, 1.0)
    return tensor.float().clamp(0.0, 1.0)


def to_grayscale(img: torch.Tensor) -> torch.Tensor:
    """[3, H, W] -> [1, H, W] by ITU-R 601 luma; [1, H, W] is returned unchanged."""
    if img.shape[0] == 1:
        return img
    weights = img.new_tensor(LUMA_WEIGHTS).view(3, 1, 1)
    return (img * weights).sum(0, keepdim=True)


def match_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert [C, H, W] to `channels` channels: RGB -> luma, or gray repeated three times."""
    if img.shape[0] == channels:
        return img
    if channels == 1:
        return to_grayscale(img)
    return img.expand(3, -1, -1).contiguous()


def resized_crop(img: torch.Tensor, box: tuple[int, int, int, int], size: int | tuple[int, int]) -> torch.Tensor:
    """Crop `box = (top, left, height, width)` from [C, H, W] and resize it to `size` (bicubic, antialiased)."""
    top, left, height, width = box
    out_h, out_w = (size, size) if isinstance(size, int) else size
    patch = img[:, top : top + height, left : left + width]  # [C, h, w]
    if (height, width) == (out_h, out_w):
        return patch.clone()
    return resize(patch, (out_h, out_w))


def resize(img: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased resize of [C, H, W] to `size` (an int means square), clamped to [0, 1]."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if tuple(img.shape[-2:]) == (out_h, out_w):
        return img
    out = F.interpolate(img[None], size=(out_h, out_w), mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp_(0.0, 1.0)  # [C, out_h, out_w]


def hflip(img: torch.Tensor) -> torch.Tensor:
    """Mirror [C, H, W] left-right (the lateral direction of the probe; depth is never flipped)."""
    return img.flip(-1)


def normalize(img: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel (x - mean) / std of [C, H, W]; `mean`/`std` have C entries."""
    mean_t = img.new_tensor(list(mean)).view(-1, 1, 1)
    std_t = img.new_tensor(list(std)).view(-1, 1, 1)
    return (img - mean_t) / std_t
