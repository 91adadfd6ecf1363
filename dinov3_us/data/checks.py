"""Config value checks of the data path: each returns the value in canonical form or raises `ConfigError`.

Used by the augmentations (`dinov3_us.data.augment`) and the iBOT masking collate, with the config key
(`augment.blur_sigma`, `ibot.mask_ratio_min_max`, ...) named in the error.
"""

from __future__ import annotations

from dinov3_us.errors import ConfigError


def check_range(bounds, key: str, low: float | None = None, high: float | None = None) -> tuple[float, float]:
    """Validate a `[lo, hi]` pair (optionally inside [low, high]) and return it as floats."""
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a pair [min, max] of numbers, got {bounds!r}") from None
    if lo > hi or (low is not None and lo < low) or (high is not None and hi > high):
        where = f" within [{low}, {high}]" if low is not None or high is not None else ""
        raise ConfigError(f"{key}: expected min <= max{where}, got {bounds!r}")
    return lo, hi


def check_probability(p, key: str) -> float:
    """Validate a probability in [0, 1] and return it as a float."""
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a probability in [0, 1], got {p!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key}: expected a probability in [0, 1], got {p!r}")
    return value


def positive_int(value, key: str, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`, else a ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def check_stats(values, key: str, length: int) -> tuple[float, ...]:
    """A mean/std list of `length` numbers (std entries must be > 0 where `key` ends in std)."""
    try:
        stats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {length} numbers, got {values!r}") from None
    if len(stats) != length or (key.endswith("std") and min(stats) <= 0):
        raise ConfigError(f"{key}: expected {length} numbers{' > 0' if key.endswith('std') else ''}, got {values!r}")
    return stats
