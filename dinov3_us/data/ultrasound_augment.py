"""Random ultrasound augmentation: samples the parameters of `dinov3_us.data.ultrasound` per crop.

Order (the acoustic chain): acoustic shadow -> depth attenuation -> speckle -> TGC -> gamma (grey
map). Each step is applied with its own probability; keys and defaults are `ULTRASOUND_DEFAULTS`
(they live in the `augment:` config section, see `dinov3_us.data.augmentations`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from dinov3_us.data import ultrasound as us
from dinov3_us.data.rng import GeneratorLike, as_rng, check_probability, check_range
from dinov3_us.errors import ConfigError

# key: default. `*_p` are probabilities per crop; [a, b] pairs are ranges drawn uniformly.
ULTRASOUND_DEFAULTS: dict = {
    "speckle_p": 0.3,
    "speckle_sigma": [0.05, 0.25],  # std of the multiplicative gamma noise (mean 1)
    "speckle_grain": [1.0, 2.0],  # speckle grain size in output pixels
    "tgc_p": 0.3,
    "tgc_gain_db": 6.0,  # each TGC slider in [-gain, +gain] dB (amplitude)
    "tgc_points": 5,  # number of TGC sliders spread over the sector depth
    "attenuation_p": 0.2,
    "attenuation_db": [0.0, 6.0],  # extra loss at the sector bottom, dB
    "gamma_p": 0.3,
    "gamma_range": [0.7, 1.5],  # drawn log-uniformly
    "shadow_p": 0.1,
    "shadow_strength": [0.4, 0.8],  # fraction of intensity removed in the shadow core
    "shadow_width": [0.03, 0.1],  # half-width as a fraction of the crop width
}

_RANGES = {
    "speckle_sigma": (0.0, 1.0),
    "speckle_grain": (1.0, None),
    "attenuation_db": (0.0, None),
    "gamma_range": (1e-3, None),
    "shadow_strength": (0.0, 1.0),
    "shadow_width": (1e-3, 1.0),
}


class UltrasoundAugment:
    """Per-crop random speckle, TGC, depth attenuation, gamma and acoustic shadow.

    Args:
        params: overrides of `ULTRASOUND_DEFAULTS` (an unknown key is a `ConfigError`).
        prefix: config section named in error messages.
    """

    def __init__(self, params: Mapping | None = None, prefix: str = "augment"):
        unknown = sorted(set(params or {}) - set(ULTRASOUND_DEFAULTS))
        if unknown:
            raise ConfigError(f"{prefix}.{unknown[0]}: unknown ultrasound augmentation key")
        cfg = {**ULTRASOUND_DEFAULTS, **dict(params or {})}
        self.p = {k: check_probability(v, f"{prefix}.{k}") for k, v in cfg.items() if k.endswith("_p")}
        self.ranges = {k: check_range(cfg[k], f"{prefix}.{k}", *bounds) for k, bounds in _RANGES.items()}
        self.tgc_gain_db = float(cfg["tgc_gain_db"])
        self.tgc_points = int(cfg["tgc_points"])
        if self.tgc_gain_db < 0 or self.tgc_points < 1:
            raise ConfigError(f"{prefix}.tgc_gain_db / tgc_points: expected >= 0 and >= 1, got {cfg}")

    def _draw(self, rng: np.random.Generator, key: str) -> float:
        lo, hi = self.ranges[key]
        return float(rng.uniform(lo, hi))

    def __call__(
        self,
        img: torch.Tensor,
        depth: np.ndarray | None = None,
        generator: GeneratorLike = None,
        beam_tilt: float = 0.0,
    ) -> torch.Tensor:
        """Augment [C, H, W] in [0, 1]; `depth` [H] in [0, 1] per row (default: the crop's own rows)."""
        rng = as_rng(generator)
        height, width = img.shape[-2:]
        if depth is None:
            depth = ((np.arange(height) + 0.5) / height).astype(np.float32)
        if rng.random() < self.p["shadow_p"]:
            top, column = us.find_reflector(img, rng)
            half_width = self._draw(rng, "shadow_width") * width
            img = us.acoustic_shadow(img, top, column, half_width, self._draw(rng, "shadow_strength"), beam_tilt)
        if rng.random() < self.p["attenuation_p"]:
            img = us.depth_attenuation(img, depth, self._draw(rng, "attenuation_db"))
        if rng.random() < self.p["speckle_p"]:
            img = us.speckle_noise(img, self._draw(rng, "speckle_sigma"), rng, self._draw(rng, "speckle_grain"))
        if rng.random() < self.p["tgc_p"]:
            gains = rng.uniform(-self.tgc_gain_db, self.tgc_gain_db, size=self.tgc_points)
            img = us.time_gain_compensation(img, depth, gains)
        if rng.random() < self.p["gamma_p"]:
            lo, hi = np.log(self.ranges["gamma_range"])
            img = us.gamma_correction(img, float(np.exp(rng.uniform(lo, hi))))
        return img
