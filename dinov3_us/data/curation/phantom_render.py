"""Procedural fetal-ultrasound phantom: SYNTHETIC images, not clinical data, laid out like the pooled public set.

A pool such as FetalUS-188K is varied across planes (head, abdomen, femur, thorax, maternal cervix, ...)
and look-alike within the brain planes. The phantom renders both, each image a section in a
curvilinear-probe fan on black with depth attenuation and multiplicative speckle:

- the three **brain planes** (the labelled task, `BRAIN_PLANES`): an axial head (bright elliptical skull,
  hypoechoic brain, midline echo, cavum septi pellucidi) that differs between the planes only in small,
  low-contrast inner structures, as trans-thalamic / trans-ventricular / trans-cerebellar planes do:
  `thalami`, two paired hypoechoic ovals either side of the midline; `ventricles`, an elongated
  hypoechoic lateral-ventricle band with a bright choroid plexus; `cerebellum`, a dumbbell of two round
  hemispheres joined by a bright vermis, and a dark cisterna magna behind it;
- four **coarse planes** (unlabelled pretraining data, `COARSE_PLANES`) with large structures that a
  global and a local crop of one image share: `abdomen` (a round section with a bright wall, a dark
  stomach bubble, the spine's three ossification centres and the umbilical vein), `femur` (a long bright
  bone with its acoustic shadow in muscle), `heart` (a four-chamber view: dark chambers behind a bright
  cross of septa, and ribs), `cervix` (the maternal cervix: a layered band around a dark canal).

Gain is per synthetic patient; probe, depth attenuation and speckle statistics are the same for every
image, so what tells two images apart is their anatomy and pose. Image `index` of `seed` is a pure
function of (seed, index, size): even
indices are brain planes (brain image j = index / 2 has plane j % 3 and synthetic patient j // 3, one
image of each plane per patient, sharing head size and shape), odd indices are coarse planes (coarse
image c = (index - 1) / 2 has plane c % 4, its own synthetic patient), so the same arguments always give
the same pixels, whatever the number of samples.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

BRAIN_PLANES = ("thalami", "ventricles", "cerebellum")
COARSE_PLANES = ("abdomen", "femur", "heart", "cervix")
CLASSES = BRAIN_PLANES  # the labelled task

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


def plane_of(index: int) -> tuple[str, str]:
    """(plane, synthetic patient) of image `index`."""
    if index % 2 == 0:
        j = index // 2
        return BRAIN_PLANES[j % 3], f"p{j // 3:05d}"
    c = index // 2
    return COARSE_PLANES[c % len(COARSE_PLANES)], f"u{c:05d}"


def _blob(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    """Soft-edged ellipse indicator (1 inside, smooth falloff at the border)."""
    d = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2
    return 1.0 / (1.0 + np.exp(np.minimum((d - 1.0) * 6.0, 50.0)))


def _ring(rho: np.ndarray, width: float) -> np.ndarray:
    """A thin bright line along `rho == 1`."""
    return np.exp(-(((rho - 1.0) / width) ** 2))


def _frame(rng, size: int):
    """Pixel grid, probe geometry (fan mask, depth) and a rotated frame at a random centre."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    ax, ay = size / 2.0, -0.15 * size  # probe apex above the image
    r = np.hypot(xx - ax, yy - ay)
    fan = (np.abs(np.arctan2(xx - ax, yy - ay)) < 0.62) & (r > 0.22 * size) & (r < 1.13 * size)
    return xx, yy, r, fan


def _rotated(xx, yy, cx, cy, theta, a, b):
    dx, dy = xx - cx, yy - cy
    return (dx * np.cos(theta) + dy * np.sin(theta)) / a, (-dx * np.sin(theta) + dy * np.cos(theta)) / b


def _head_pose(rng, anat, size: int) -> dict:
    """The head's size and shape (per patient, from `anat`) and pose (per image, from `rng`), in pixels / radians."""
    a = size * anat.uniform(0.36, 0.42)  # a standard plane is zoomed on the head
    b = a * anat.uniform(0.74, 0.84)
    tilt, upside_down = rng.uniform(-0.25, 0.25), rng.random() < 0.5  # near the standard orientation
    cx, cy = size * (0.5 + rng.uniform(-0.03, 0.03)), size * (0.55 + rng.uniform(-0.03, 0.03))
    return {"a": a, "b": b, "tilt": tilt, "upside_down": bool(upside_down), "cx": cx, "cy": cy}


def _head(pose: dict, plane: str, xx, yy, size: int) -> np.ndarray:
    """An axial head of brain plane `plane` at `pose` (`_head_pose`)."""
    a, b = pose["a"], pose["b"]
    theta = pose["tilt"] + (np.pi if pose["upside_down"] else 0.0)
    u, v = _rotated(xx, yy, pose["cx"], pose["cy"], theta, a, b)
    rho = np.hypot(u, v)
    img = np.where(rho < 1.0, -0.06, 0.0) + 0.62 * _ring(rho, max(1.2 / a, 0.045))
    img = img + 0.22 * np.exp(-((v * b / max(0.9, size / 110)) ** 2)) * (np.abs(u) < 0.85) * (rho < 1.0)
    for cu, cv, ru, rv, delta in _COMMON + _STRUCTURES[plane]:
        img = img + delta * _blob(u, v, cu, cv, ru, rv) * (rho < 0.97)
    return img


def _abdomen(rng, xx, yy, size: int) -> np.ndarray:
    a = size * rng.uniform(0.3, 0.37)
    theta = rng.uniform(0, 2 * np.pi)
    cx, cy = size * (0.5 + rng.uniform(-0.06, 0.06)), size * (0.56 + rng.uniform(-0.05, 0.05))
    u, v = _rotated(xx, yy, cx, cy, theta, a, a * rng.uniform(0.9, 1.0))
    rho = np.hypot(u, v)
    img = np.where(rho < 1.0, 0.02, 0.0) + 0.5 * _ring(rho, max(2.0 / a, 0.06))
    img = img - 0.22 * _blob(u, v, -0.2, 0.38, 0.3, 0.22)  # stomach bubble
    for du, dv in ((0.68, 0.0), (0.5, 0.14), (0.5, -0.14)):  # the spine's ossification centres
        img = img + 0.55 * _blob(u, v, du, dv, 0.09, 0.09)
    return img - 0.16 * np.exp(-((np.hypot(u + 0.1, v + 0.35) - 0.45) / 0.07) ** 2) * (u < 0.2)  # umbilical vein


def _femur(rng, xx, yy, size: int) -> np.ndarray:
    length = size * rng.uniform(0.28, 0.36)
    theta = rng.uniform(-0.5, 0.5)
    cx, cy = size * (0.5 + rng.uniform(-0.08, 0.08)), size * (0.5 + rng.uniform(-0.06, 0.06))
    u, v = _rotated(xx, yy, cx, cy, theta, length, size * 0.025)
    bone = np.exp(-(v**2)) * (np.abs(u) < 1.0)
    shadow = (v > 0) & (np.abs(u) < 0.95)  # below the bone, along the beam
    muscle = 0.05 * np.sin((xx * np.cos(theta) + yy * np.sin(theta)) / size * 40)
    return 0.7 * bone - 0.22 * shadow * (1 - np.exp(-v / 8)) + muscle


def _heart(rng, xx, yy, size: int) -> np.ndarray:
    a = size * rng.uniform(0.2, 0.25)
    theta = rng.uniform(-0.8, 0.8)
    cx, cy = size * (0.5 + rng.uniform(-0.06, 0.06)), size * (0.58 + rng.uniform(-0.05, 0.05))
    u, v = _rotated(xx, yy, cx, cy, theta, a, a)
    rho = np.hypot(u, v)
    chambers = (rho < 0.85) * (np.minimum(np.abs(u), np.abs(v)) > 0.1)
    img = 0.45 * _ring(rho, 0.08) - 0.2 * chambers + 0.3 * (rho < 0.85) * (np.minimum(np.abs(u), np.abs(v)) < 0.06)
    for k in range(5):  # ribs: short bright arcs around the chest
        phi = theta + 2 * np.pi * k / 5 + rng.uniform(-0.2, 0.2)
        img = img + 0.4 * _blob(u, v, 1.9 * np.cos(phi), 1.9 * np.sin(phi), 0.25, 0.1)
    return img


def _cervix(rng, xx, yy, size: int) -> np.ndarray:
    theta = rng.uniform(-0.35, 0.35)
    cx, cy = size * (0.5 + rng.uniform(-0.08, 0.08)), size * (0.55 + rng.uniform(-0.06, 0.06))
    u, v = _rotated(xx, yy, cx, cy, theta, size * rng.uniform(0.3, 0.38), size * 0.12)
    band = np.abs(u) < 1.0
    layers = 0.1 * np.cos(v * 9) * np.exp(-(v**2) / 2)
    return band * (0.18 * np.exp(-(v**2) / 1.5) + layers - 0.28 * np.exp(-((v / 0.18) ** 2)))


_COARSE = {"abdomen": _abdomen, "femur": _femur, "heart": _heart, "cervix": _cervix}


def _draws(seed: int, index: int):
    """(plane, per-patient and per-image generators, gain, background phase): the first draws of image `index`."""
    plane, patient = plane_of(index)
    anat = np.random.default_rng([seed, int(patient[1:]), 7 if patient[0] == "p" else 11])  # per patient
    rng = np.random.default_rng([seed, index])  # per image: pose, acquisition and noise
    gain = anat.uniform(0.85, 1.1)  # per patient: a patient's brain planes share it
    return plane, anat, rng, gain, rng.uniform(0, 6)


def nuisances(seed: int, index: int, size: int) -> dict:
    """What varies in brain image `index` besides its plane: the patient's `gain`, head `size` (semi-major axis
    over the image side) and `aspect`, and the image's pose (`tilt` in radians, `upside_down`), as `render`
    draws them. For a diagnosis of what a representation encodes (bench/bench_knn_neighbours.py)."""
    plane, anat, rng, gain, _ = _draws(seed, index)
    if plane not in BRAIN_PLANES:
        raise ValueError(f"phantom image {index} is a {plane} plane, not a brain plane")
    pose = _head_pose(rng, anat, size)
    return {"gain": gain, "size": pose["a"] / size, "aspect": pose["b"] / pose["a"], "tilt": pose["tilt"],
            "upside_down": pose["upside_down"]}


def render(seed: int, index: int, size: int) -> np.ndarray:
    """The phantom image `index` of `seed` as a (size, size) uint8 array."""
    plane, anat, rng, gain, phase = _draws(seed, index)
    xx, yy, r, fan = _frame(rng, size)
    attenuation, grain = 0.35, 1  # the same probe for every image: speckle cells of 3 x 3 pixels
    img = 0.3 + 0.04 * np.sin(xx / size * 7 + phase) * np.cos(yy / size * 5)
    if plane in BRAIN_PLANES:
        img = img + _head(_head_pose(rng, anat, size), plane, xx, yy, size)
    else:
        img = img + _COARSE[plane](rng, xx, yy, size)
    img = img * (1.0 - attenuation * np.clip((r - 0.22 * size) / (0.91 * size), 0, 1)) * gain
    speckle = rng.gamma(2.5, 1 / 2.5, size=(size + 2 * grain, size + 2 * grain))
    n = 2 * grain + 1  # cells of n x n pixels, the same contrast at every grain
    speckle = sum(speckle[i : i + size, j : j + size] for i in range(n) for j in range(n))
    speckle = 1.0 + 0.22 * (speckle - speckle.mean()) / speckle.std()
    img = np.clip(img * np.clip(speckle, 0.1, None) * fan, 0.0, 1.0)
    return np.rint(img * 255).astype(np.uint8)


def render_png(seed: int, index: int, size: int) -> bytes:
    """The phantom image as PNG bytes (what the curation pipeline treats as the 'original file')."""
    buf = io.BytesIO()
    Image.fromarray(render(seed, index, size)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
