"""Ultrasound-specific intensity transforms, as deterministic functions of their parameters.

All act on a float32 tensor [C, H, W] in [0, 1] and return a new one, clamped to [0, 1]. Rows are
depth (the probe face is at the top); `depth` is a numpy array [H] of normalised depths in [0, 1]
(0 = top of the scan sector, 1 = its bottom), so a crop gets the gain of the depth it came from.
All are multiplicative (or a power law), so the black background outside the sector stays black.
The random wrapper that samples their parameters is `dinov3_us.data.augment.ultrasound_augment`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _db_to_amplitude(db: np.ndarray | float) -> np.ndarray:
    """Amplitude factor of a gain in dB (20 log10)."""
    return np.power(10.0, np.asarray(db, dtype=np.float64) / 20.0)


def _row_gain(img: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    """Multiply each row of [C, H, W] by `factor` [H]."""
    return (img * torch.from_numpy(factor.astype(np.float32)).view(1, -1, 1)).clamp_(0.0, 1.0)


def speckle_noise(img: torch.Tensor, sigma: float, rng: np.random.Generator, grain: float = 1.0) -> torch.Tensor:
    """Multiplicative speckle: x * n, n ~ Gamma(1 / sigma^2, sigma^2) (mean 1, std `sigma`).

    Gamma-distributed intensity is the multi-look form of fully developed (Rayleigh-amplitude)
    speckle. The noise field is drawn at 1 / `grain` resolution and upsampled (bilinear), giving
    speckle grains about `grain` pixels wide; one field is shared by all channels.
    """
    if sigma <= 0:
        return img.clone()
    height, width = img.shape[-2:]
    small = (max(1, math.ceil(height / grain)), max(1, math.ceil(width / grain)))
    shape = 1.0 / sigma**2
    noise = torch.from_numpy(rng.gamma(shape, 1.0 / shape, size=small).astype(np.float32))  # [h, w], mean 1
    if small != (height, width):
        noise = F.interpolate(noise[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return (img * noise[None]).clamp_(0.0, 1.0)


def time_gain_compensation(img: torch.Tensor, depth: np.ndarray, gains_db) -> torch.Tensor:
    """Apply a TGC curve: `gains_db` [K] are slider gains (dB) at K depths evenly spaced over [0, 1].

    The gain at each row is linearly interpolated between the sliders, as on a scanner's TGC panel.
    """
    gains_db = np.asarray(gains_db, dtype=np.float64)
    knots = np.linspace(0.0, 1.0, len(gains_db)) if len(gains_db) > 1 else np.zeros(1)
    return _row_gain(img, _db_to_amplitude(np.interp(depth, knots, gains_db)))


def depth_attenuation(img: torch.Tensor, depth: np.ndarray, loss_db: float) -> torch.Tensor:
    """Extra attenuation growing linearly in dB with depth: `loss_db` at the sector bottom."""
    return _row_gain(img, _db_to_amplitude(-loss_db * np.asarray(depth, dtype=np.float64)))


def gamma_correction(img: torch.Tensor, gamma: float) -> torch.Tensor:
    """Display gamma x ** gamma (a different log-compression / grey map); > 1 darkens mid-greys."""
    return img.clamp(0.0, 1.0).pow(gamma)


def acoustic_shadow(
    img: torch.Tensor,
    top: int,
    center: float,
    half_width: float,
    strength: float,
    tilt: float = 0.0,
    spread: float = 0.3,
) -> torch.Tensor:
    """Darken the band below a strong reflector at row `top`, column `center` (pixels).

    The shadow follows the beam direction (`tilt` = columns per row, 0 = straight down), widens by
    `spread` x its length over the image height, removes `strength` of the intensity at its core and
    has soft (cosine) lateral edges and a short ramp at its start. Rows above `top` are unchanged.
    """
    height, width = img.shape[-2:]
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1)  # [H, 1]
    xs = torch.arange(width, dtype=torch.float32).view(1, -1)  # [1, W]
    below = (ys - top).clamp(min=0.0)
    axis = center + tilt * below  # [H, 1]: the beam line through the reflector
    hw = half_width * (1.0 + spread * below / max(1, height))
    lateral = ((xs - axis).abs() / hw).clamp(max=1.0)  # [H, W]: 0 on the axis, 1 outside
    profile = 0.5 * (1.0 + torch.cos(math.pi * lateral))  # 1 on the axis, 0 at the edge
    onset = (below / max(2.0, 0.05 * height)).clamp(max=1.0) * (ys >= top)  # [H, 1]
    factor = 1.0 - strength * profile * onset  # [H, W]
    return (img * factor[None]).clamp_(0.0, 1.0)


def find_reflector(img: torch.Tensor, rng: np.random.Generator, max_depth: float = 0.7) -> tuple[int, int]:
    """(row, column) of a bright structure in the upper `max_depth` of [C, H, W], drawn among the brightest 5%."""
    height, width = img.shape[-2:]
    gray = img.mean(0, keepdim=True)[None]  # [1, 1, H, W]
    smooth = F.avg_pool2d(gray, 5, stride=1, padding=2, count_include_pad=False)[0, 0]
    rows = max(1, int(height * max_depth))
    region = smooth[:rows].flatten()
    k = max(1, region.numel() // 20)
    candidates = torch.topk(region, k).indices.numpy()
    index = int(candidates[rng.integers(0, len(candidates))])
    return index // width, index % width
