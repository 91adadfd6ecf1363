"""Pixel-level curation steps on uint8 numpy arrays: burned-in annotation masking, scan-sector box, mask filling.

All steps are deterministic and conservative: where nothing is detected the image is left as it is.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _shifted(a: np.ndarray, r: int, fn, fill) -> np.ndarray:
    """Reduce `a` over its (2r+1)^2 neighbourhood with `fn` (np.minimum / np.maximum / np.logical_or)."""
    h, w = a.shape
    p = np.pad(a, r, mode="constant", constant_values=fill)
    out = a.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out = fn(out, p[r + dy : r + dy + h, r + dx : r + dx + w])
    return out


def annotation_mask(arr: np.ndarray) -> np.ndarray:
    """Boolean mask of burned-in text, calipers and markers.

    Ultrasound is gray and blurred by the point-spread function, so two cues flag overlays:
    coloured pixels (channel spread > 40), and bright pixels (>= 150) with a step of >= 100 gray
    levels to a 3x3 neighbour (glyph edges). The mask is grown by one pixel over bright anti-aliased
    glyph borders (>= 100).
    """
    arr = np.asarray(arr)
    if arr.ndim == 3:
        r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
        spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
        gray = np.asarray(Image.fromarray(arr).convert("L"))
        mask = spread > 40
    else:
        gray, mask = arr, np.zeros(arr.shape, dtype=bool)
    local_min = _shifted(gray, 1, np.minimum, 255)
    mask |= (gray >= 150) & (gray - local_min >= 100)
    grown = _shifted(mask, 1, np.logical_or, False)
    return mask | (grown & (gray >= 100))


def inpaint_mean(arr: np.ndarray, mask: np.ndarray, r: int = 3) -> np.ndarray:
    """Replace masked pixels by the mean of unmasked pixels in their (2r+1)^2 window (0 where none)."""
    if not mask.any():
        return arr
    keep = (~mask).astype(np.uint8)
    weight = np.asarray(Image.fromarray(keep * 255).filter(ImageFilter.BoxBlur(r)), dtype=np.float32)
    out = arr.copy()
    planes = [out] if out.ndim == 2 else [out[..., c] for c in range(out.shape[2])]
    for plane in planes:
        total = np.asarray(Image.fromarray(plane * keep).filter(ImageFilter.BoxBlur(r)), dtype=np.float32)
        fill = np.where(weight > 0, total * 255.0 / np.maximum(weight, 1.0), 0.0)
        plane[mask] = np.clip(np.rint(fill[mask]), 0, 255).astype(np.uint8)
    return out


def _longest_run(on: np.ndarray) -> tuple[int, int] | None:
    """(start, stop) of the longest run of True values, or None."""
    best, start = None, None
    for i, v in enumerate(np.append(on, False)):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if best is None or i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def sector_box(gray: np.ndarray, threshold: int = 8, occupancy: float = 0.02, margin: int = 2):
    """Bounding box (left, top, right, bottom) of the scan sector, or None when not detectable.

    Columns (then rows, within those columns) whose fraction of non-black pixels exceeds `occupancy`
    form runs; the longest run is the sector, which drops side panels and text separated from it by
    black. Boxes under 20% of the frame are rejected as failed detections.
    """
    on = np.asarray(gray) > threshold
    h, w = on.shape
    cols = _longest_run(on.mean(axis=0) > occupancy)
    if cols is None:
        return None
    rows = _longest_run(on[:, cols[0] : cols[1]].mean(axis=1) > occupancy)
    if rows is None:
        return None
    left, right = max(cols[0] - margin, 0), min(cols[1] + margin, w)
    top, bottom = max(rows[0] - margin, 0), min(rows[1] + margin, h)
    if (right - left) * (bottom - top) < 0.2 * h * w:
        return None
    return (left, top, right, bottom)


def fill_outline(outline: np.ndarray) -> np.ndarray:
    """Filled binary mask (0/255) from an outline drawing (e.g. HC18 `_Annotation.png`).

    Flood-fills the background from outside the (padded) image; everything not reached is the
    outline or its interior.
    """
    on = np.asarray(outline) > 127
    padded = np.pad(on, 1).astype(np.uint8) * 255
    img = Image.fromarray(padded).copy()  # a writable image (fromarray may share the read-only buffer)
    ImageDraw.floodfill(img, (0, 0), 128)
    filled = np.asarray(img)[1:-1, 1:-1] != 128
    return filled.astype(np.uint8) * 255
