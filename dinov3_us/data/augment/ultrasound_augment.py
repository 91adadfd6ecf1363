"""Random ultrasound augmentation: samples the parameters of `dinov3_us.data.augment.ultrasound` per crop.

Order (the acoustic chain): acoustic shadow -> depth attenuation -> speckle -> TGC -> gamma (grey
map). Each step is applied with its own probability; keys are `ULTRASOUND_KEYS`, their
defaults those of the `augment:` section of `ssl_default_config.yaml` (`ULTRASOUND_DEFAULTS`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from dinov3_us.data.augment import ultrasound as us
from dinov3_us.data.augment.defaults import AUGMENT_DEFAULTS
from dinov3_us.data.checks import check_probability, check_range
from dinov3_us.data.rng import GeneratorLike, as_rng
from dinov3_us.errors import ConfigError

# The `augment:` keys of this transform (defaults: `ssl_default_config.yaml`). `*_p` are probabilities
# per crop; [a, b] pairs are ranges drawn uniformly.
ULTRASOUND_KEYS = (
    "speckle_p",
    "speckle_sigma",  # std of the multiplicative gamma noise (mean 1)
    "speckle_grain",  # speckle grain size in output pixels
    "tgc_p",
    "tgc_gain_db",  # each TGC slider in [-gain, +gain] dB (amplitude)
    "tgc_points",  # number of TGC sliders spread over the sector depth
    "attenuation_p",
    "attenuation_db",  # extra loss at the sector bottom, dB
    "gamma_p",
    "gamma_range",  # drawn log-uniformly
    "shadow_p",
    "shadow_strength",  # fraction of intensity removed in the shadow core
    "shadow_width",  # half-width as a fraction of the crop width
)
ULTRASOUND_DEFAULTS: dict = {k: AUGMENT_DEFAULTS[k] for k in ULTRASOUND_KEYS}

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
