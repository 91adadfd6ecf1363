"""Procedural fetal-head ultrasound phantom: SYNTHETIC images, not clinical data.

Each image is an axial "head" in a curvilinear-probe fan on black: a speckled tissue background, a
bright elliptical skull, a hypoechoic brain with a midline echo and a cavum septi pellucidi (CSP),
depth attenuation and multiplicative speckle. The three classes differ only in small, low-contrast
inner structures, mimicking what tells the trans-thalamic / trans-ventricular / trans-cerebellar
planes apart:

- `thalami`: two paired hypoechoic ovals either side of the midline, centrally;
- `ventricles`: one elongated hypoechoic lateral-ventricle band with a bright choroid plexus, posteriorly;
- `cerebellum`: a dumbbell of two round hypoechoic hemispheres joined by a bright vermis, plus a dark
  cisterna magna behind it, at the posterior end.

Image `index` of `seed` is a pure function of (seed, index, size): its class is `index % 3` and its
synthetic patient `index // 3` (one image of each class per patient, sharing head size, shape and
gain), so the same arguments always give the same pixels, whatever the number of samples.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

CLASSES = ("thalami", "ventricles", "cerebellum")

# Inner structures in head coordinates (u along the major axis, anterior < 0 < posterior; v across),
# as (u, v, radius_u, radius_v, intensity change). Small and low-contrast on purpose.
_COMMON = [(-0.38, 0.0, 0.13, 0.07, -0.15)]  # CSP
_STRUCTURES = {
    "thalami": [(0.08, 0.19, 0.21, 0.14, -0.13), (0.08, -0.19, 0.21, 0.14, -0.13)],
    "ventricles": [(0.42, 0.32, 0.32, 0.08, -0.15), (0.5, 0.32, 0.11, 0.055, 0.25)],
    "cerebellum": [
        (0.52, 0.17, 0.14, 0.14, -0.13),
        (0.52, -0.17, 0.14, 0.14, -0.13),
        (0.52, 0.0, 0.08, 0.05, 0.15),
        (0.78, 0.0, 0.1, 0.19, -0.15),
    ],
}


def _blob(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    """Soft-edged ellipse indicator (1 inside, smooth falloff at the border)."""
    d = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2
    return 1.0 / (1.0 + np.exp(np.minimum((d - 1.0) * 6.0, 50.0)))


def render(seed: int, index: int, size: int) -> np.ndarray:
    """The phantom image `index` of `seed` as a (size, size) uint8 array."""
    label = CLASSES[index % 3]
    anat = np.random.default_rng([seed, index // 3, 7])  # per-patient anatomy
    rng = np.random.default_rng([seed, index])  # per-image pose and noise
    a = size * anat.uniform(0.27, 0.33)
    b = a * anat.uniform(0.74, 0.84)
    gain = anat.uniform(0.85, 1.1)
    theta = rng.uniform(-0.6, 0.6) + (np.pi if rng.random() < 0.5 else 0.0)
    cx = size * (0.5 + rng.uniform(-0.05, 0.05))
    cy = size * (0.56 + rng.uniform(-0.04, 0.04))

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    ax, ay = size / 2.0, -0.15 * size  # probe apex above the image
    r = np.hypot(xx - ax, yy - ay)
    fan = (np.abs(np.arctan2(xx - ax, yy - ay)) < 0.62) & (r > 0.22 * size) & (r < 1.13 * size)

    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
    rho = np.hypot(u, v)
    width = max(1.2 / a, 0.045)

    img = 0.3 + 0.04 * np.sin(xx / size * 7 + rng.uniform(0, 6)) * np.cos(yy / size * 5)
    img = np.where(rho < 1.0, 0.24, img)
    img = img + 0.62 * np.exp(-(((rho - 1.0) / width) ** 2))
    midline = np.exp(-((v * b / max(0.9, size / 110)) ** 2)) * (np.abs(u) < 0.85) * (rho < 1.0)
    img = img + 0.22 * midline
    for cu, cv, ru, rv, delta in _COMMON + _STRUCTURES[label]:
        img = img + delta * _blob(u, v, cu, cv, ru, rv) * (rho < 0.97)

    img = img * (1.0 - 0.35 * np.clip((r - 0.22 * size) / (0.91 * size), 0, 1)) * gain
    speckle = rng.gamma(2.5, 1 / 2.5, size=(size + 2, size + 2))
    speckle = sum(speckle[i : i + size, j : j + size] for i in range(3) for j in range(3)) / 9.0
    img = np.clip(img * speckle * fan, 0.0, 1.0)
    return np.rint(img * 255).astype(np.uint8)


def render_png(seed: int, index: int, size: int) -> bytes:
    """The phantom image as PNG bytes (what the curation pipeline treats as the 'original file')."""
    buf = io.BytesIO()
    Image.fromarray(render(seed, index, size)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
