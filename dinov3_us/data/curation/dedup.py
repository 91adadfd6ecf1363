"""Near-duplicate detection by perceptual hash (pHash), within a build and against earlier builds.

`phash` is the classic 64-bit DCT hash: the image is reduced to 32x32 gray, its 2-D DCT taken, and
the 8x8 lowest frequencies (DC excluded from the median) thresholded at their median. Two images
are near-duplicates when their hashes differ in at most `threshold` bits. `HashIndex` finds them
without comparing all pairs: with the 64 bits cut into `threshold + 1` chunks, two hashes within
the threshold agree exactly on at least one chunk (pigeonhole), so only bucket-mates are compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dinov3_us.errors import DataError

_N = 32
_k = np.arange(_N)
_DCT = np.sqrt(2.0 / _N) * np.cos(np.pi * (2 * _k[None, :] + 1) * _k[:, None] / (2 * _N))
_DCT[0] /= np.sqrt(2.0)


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash of a PIL image."""
    small = np.asarray(image.convert("L").resize((_N, _N), Image.Resampling.BILINEAR), dtype=np.float64)
    coeffs = (_DCT @ small @ _DCT.T)[:8, :8].ravel()
    bits = coeffs > np.median(coeffs[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def to_hex(h: int) -> str:
    """The hash as 16 hex digits (how it is stored in json and hashes.json)."""
    return f"{h:016x}"


class HashIndex:
    """Multi-index of 64-bit hashes answering 'is there a stored hash within `threshold` bits?'."""

    def __init__(self, threshold: int):
        if not 0 <= threshold < 32:
            raise DataError(f"dedup threshold must be in [0, 31] bits, got {threshold}")
        self.threshold = threshold
        n = threshold + 1
        bounds = [round(i * 64 / n) for i in range(n + 1)]
        self._chunks = [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self._buckets: list[dict[int, list[tuple[int, str]]]] = [{} for _ in self._chunks]

    def query(self, h: int) -> tuple[str, int] | None:
        """(key, distance) of the closest stored hash within the threshold, or None.

        Ties go to the smallest key, so the answer does not depend on the order of `add` calls.
        """
        best = None
        for (shift, width), buckets in zip(self._chunks, self._buckets):
            for other, key in buckets.get((h >> shift) & width, ()):
                d = (h ^ other).bit_count()
                if d <= self.threshold and (best is None or (d, key) < best):
                    best = (d, key)
        return None if best is None else (best[1], best[0])

    def add(self, key: str, h: int) -> None:
        """Store one hash under `key`."""
        for (shift, width), buckets in zip(self._chunks, self._buckets):
            buckets.setdefault((h >> shift) & width, []).append((h, key))


def load_hashes(out_dir: Path) -> dict[str, int]:
    """The {key: hash} table written next to an earlier build's manifest (`hashes.json`)."""
    path = Path(out_dir) / "hashes.json"
    if not path.is_file():
        raise DataError(f"{path}: not found (expected the hashes.json of a dataset built by tools/build_dataset.py)")
    try:
        table = json.loads(path.read_text())
        return {str(k): int(v, 16) for k, v in table.items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise DataError(f"{path}: not a {{key: hex hash}} JSON object ({exc})") from exc
