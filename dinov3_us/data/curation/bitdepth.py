"""Decoded image -> uint8 pixels, high-bit-depth inputs rescaled instead of clipped.

PIL's `convert("L")` clips 16-bit (`I;16*`), 32-bit (`I`) and float (`F`) pixels at 255, which turns
most of a 16-bit scan white. `to_uint8` scales them instead, by the rule decided here:

- Integer images (`I;16`, `I;16B`, `I;16L`, `I;16N`, `I`): values are divided by the *container range
  implied by the observed maximum*: `2**k - 1` for the smallest k in (8, 10, 12, 14, 16) with
  `max <= 2**k - 1` (beyond 16 bits, the smallest all-ones value >= max), then `* 255`, rounded.
  So a PNG that uses the full 16-bit range maps 0..65535 -> 0..255, and DICOM-style data storing
  10/12/14-bit values in 16 bits map 0..1023 / 4095 / 16383 -> 0..255; 8-bit values in a 16-bit
  container are kept as they are. Relative intensities are preserved (one fixed factor per image,
  never a per-image contrast stretch), and only the container's maximum becomes 255.
  The cost: a genuinely 16-bit image that is so dark that its maximum is below 2**14 is brightened
  by a power-of-two-like factor (4x, 16x, ...). Negative values (mode `I`) clip to 0.
- Why not the PNG `sBIT` chunk: Pillow does not expose it, and per the PNG spec an encoder scales
  samples with fewer significant bits up to the full depth, so sBIT does not change the divisor of a
  conforming file; the writers that store raw 10/12-bit values (DICOM exports) rarely write it.
- Float images (`F`): values in [0, 1] are taken as normalised (`* 255`); otherwise the integer
  rule on the (rounded-up) maximum. NaN becomes 0, negatives clip to 0.
- Everything else is 8-bit already: `L` is kept, other modes (`RGB`, `RGBA`, `P`, `LA`, `1`, ...)
  are converted to `RGB`, as before this module existed.

Only curation decodes arbitrary inputs; the loaders (`streaming`, `map_dataset`) decode the 8-bit
grayscale PNGs that curation wrote, so they need no such rule.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
CONTAINER_BITS = (8, 10, 12, 14, 16)


def container_max(observed_max: float) -> int:
    """`2**k - 1` for the smallest k in `CONTAINER_BITS` holding `observed_max` (all-ones above 16 bits)."""
    top = max(int(np.ceil(observed_max)), 0)
    for bits in CONTAINER_BITS:
        if top <= 2**bits - 1:
            return 2**bits - 1
    return 2 ** top.bit_length() - 1


def to_uint8(image: Image.Image) -> np.ndarray:
    """uint8 pixels of a decoded image: [H, W] for grayscale modes (high bit depth rescaled), else [H, W, 3] RGB."""
    if image.mode == "L":
        return np.asarray(image)
    if image.mode not in HIGH_BIT_MODES:
        return np.asarray(image.convert("RGB"))
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    values = np.clip(values, 0.0, None)
    peak = float(values.max()) if values.size else 0.0
    scale = 1.0 if image.mode == "F" and peak <= 1.0 else float(container_max(peak))
    return np.clip(np.rint(values * (255.0 / scale)), 0, 255).astype(np.uint8)
