"""The valid range of every numeric key of `ssl_default_config.yaml` (one key, one value at a time).

`RANGES` maps each int/float key (and each key holding a list of numbers, whose items it bounds) to a
`Range`; a `null` value is never range-checked. `PAIRS` lists the `[min, max]` keys whose two items
must be ordered, `LENGTHS` the lists of a fixed length. Keys whose value 0 means "off" allow 0; the
comment after a range says why it is not the obvious one. `tests/configs/test_ranges.py` fails when a
numeric key of the YAML has no entry here. Checks that relate several keys live in `cross_checks`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """An interval of numbers: `low`/`high` (None: unbounded), each end closed unless `*_open`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_fmt(self.low)}" if self.low is not None else "any number"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_fmt(self.high)}"
        return f"in {'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}{')' if self.high_open else ']'}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


POSITIVE = Range(0, low_open=True)  # > 0
NON_NEGATIVE = Range(0)  # >= 0 (0 usually means "off")
AT_LEAST_ONE = Range(1)  # counts, sizes, periods
UNIT = Range(0, 1)  # probabilities, momenta, fractions
UNIT_OPEN_HIGH = Range(0, 1, high_open=True)  # Adam betas, drop-path rate
UNIT_OPEN_LOW = Range(0, 1, low_open=True)  # crop scales, layer-wise decay

RANGES: dict[str, Range] = {
    "dino.loss_weight": NON_NEGATIVE,
    "dino.head_n_prototypes": AT_LEAST_ONE,
    "dino.head_bottleneck_dim": AT_LEAST_ONE,
    "dino.head_nlayers": AT_LEAST_ONE,  # DINOHead silently treats values below 1 as 1
    "dino.head_hidden_dim": AT_LEAST_ONE,
    "dino.koleo_loss_weight": NON_NEGATIVE,
    "dino.koleo_topk": AT_LEAST_ONE,
    "ibot.loss_weight": NON_NEGATIVE,
    "ibot.mask_sample_probability": UNIT,
    "ibot.mask_ratio_min_max": UNIT,  # ordered min < max (PAIRS)
    "ibot.head_n_prototypes": AT_LEAST_ONE,
    "ibot.head_bottleneck_dim": AT_LEAST_ONE,
    "ibot.head_nlayers": AT_LEAST_ONE,
    "ibot.head_hidden_dim": AT_LEAST_ONE,
    "gram.loss_weight": NON_NEGATIVE,
    "gram.it_load_ema_teacher": Range(-1),  # -1: never copy the EMA teacher
    "gram.update_frequency": AT_LEAST_ONE,  # a modulus
    "gram.it_first_update": NON_NEGATIVE,
    "gram.max_updates": NON_NEGATIVE,  # null: unlimited; 0: never refresh
    "train.batch_size_per_gpu": AT_LEAST_ONE,
    "train.seed": NON_NEGATIVE,  # numpy seeds are non-negative
    "train.num_workers": NON_NEGATIVE,  # 0: load in the main process
    "train.OFFICIAL_EPOCH_LENGTH": AT_LEAST_ONE,
    "train.log_period": AT_LEAST_ONE,  # a modulus
    "train.max_consecutive_nonfinite": NON_NEGATIVE,  # 0: stop at the first non-finite step
    "train.selfdistill_alarm_iterations": NON_NEGATIVE,  # 0: off
    "student.patch_size": AT_LEAST_ONE,
    "student.drop_path_rate": UNIT_OPEN_HIGH,  # 1 would drop every residual branch
    "student.layerscale": NON_NEGATIVE,  # 0: no LayerScale (the blocks test `if init_values`)
    "student.ffn_ratio": POSITIVE,
    "student.n_storage_tokens": NON_NEGATIVE,
    "student.in_chans": AT_LEAST_ONE,  # also one of CHOICES (1, 3)
    "student.pos_embed_rope_base": POSITIVE,
    "student.pos_embed_rope_min_period": POSITIVE,
    "student.pos_embed_rope_max_period": POSITIVE,
    "student.pos_embed_rope_shift_coords": NON_NEGATIVE,  # uniform shift in [-s, s]
    "student.pos_embed_rope_jitter_coords": AT_LEAST_ONE,  # log-uniform factor in [1/j, j]: log(j) >= 0
    "student.pos_embed_rope_rescale_coords": AT_LEAST_ONE,  # likewise
    "teacher.momentum_teacher": UNIT,
    "teacher.final_momentum_teacher": UNIT,
    "teacher.warmup_teacher_temp": POSITIVE,  # a softmax temperature divides the logits
    "teacher.teacher_temp": POSITIVE,
    "teacher.warmup_teacher_temp_epochs": NON_NEGATIVE,
    "optim.epochs": AT_LEAST_ONE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.weight_decay_end": NON_NEGATIVE,
    "optim.lr": POSITIVE,  # lr 0 trains nothing
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.min_lr": NON_NEGATIVE,
    "optim.schedule_trunc_extra": NON_NEGATIVE,  # 0: plain cosine
    "optim.clip_grad": NON_NEGATIVE,  # 0: no clipping
    "optim.freeze_last_layer_epochs": NON_NEGATIVE,
    "optim.patch_embed_lr_mult": NON_NEGATIVE,  # 0: frozen patch embedding
    "optim.dino_head_wd_multiplier": NON_NEGATIVE,
    "optim.layerwise_decay": UNIT_OPEN_LOW,  # lr x decay ** depth: 0 freezes all but the last block, > 1 inverts it
    "optim.adamw_beta1": UNIT_OPEN_HIGH,  # torch.optim.AdamW rejects beta >= 1
    "optim.adamw_beta2": UNIT_OPEN_HIGH,
    "schedules.lr.start": NON_NEGATIVE,
    "schedules.lr.peak": POSITIVE,
    "schedules.lr.end": NON_NEGATIVE,
    "schedules.lr.warmup_epochs": NON_NEGATIVE,
    "schedules.lr.freeze_last_layer_epochs": NON_NEGATIVE,
    "schedules.lr.cosine_epochs": NON_NEGATIVE,
    "schedules.weight_decay.start": NON_NEGATIVE,
    "schedules.weight_decay.peak": NON_NEGATIVE,
    "schedules.weight_decay.end": NON_NEGATIVE,
    "schedules.weight_decay.warmup_epochs": NON_NEGATIVE,
    "schedules.weight_decay.cosine_epochs": NON_NEGATIVE,
    "schedules.momentum.start": UNIT,
    "schedules.momentum.peak": UNIT,
    "schedules.momentum.end": UNIT,
    "schedules.momentum.warmup_epochs": NON_NEGATIVE,
    "schedules.momentum.cosine_epochs": NON_NEGATIVE,
    "schedules.teacher_temp.start": POSITIVE,
    "schedules.teacher_temp.peak": POSITIVE,
    "schedules.teacher_temp.end": POSITIVE,
    "schedules.teacher_temp.warmup_epochs": NON_NEGATIVE,
    "schedules.teacher_temp.cosine_epochs": NON_NEGATIVE,
    "crops.global_crops_scale": UNIT_OPEN_LOW,  # fractions of the image area
    "crops.local_crops_number": AT_LEAST_ONE,  # the DINO local loss needs local crops
    "crops.local_crops_scale": UNIT_OPEN_LOW,
    "crops.global_crops_size": AT_LEAST_ONE,  # and a multiple of student.patch_size (cross_checks)
    "crops.local_crops_size": AT_LEAST_ONE,
    "crops.gram_teacher_crops_size": AT_LEAST_ONE,
    "crops.rgb_mean": UNIT,  # pixels are in [0, 1] when normalised
    "crops.rgb_std": POSITIVE,
    "evaluation.eval_period_iterations": NON_NEGATIVE,  # 0: export only at the end
    "checkpointing.period": AT_LEAST_ONE,
    "checkpointing.max_to_keep": AT_LEAST_ONE,
    "checkpointing.keep_every": NON_NEGATIVE,  # 0: keep no extra checkpoints
    "runtime.peak_tflops": NON_NEGATIVE,  # 0: datasheet table or measured
    "runtime.start_timeout_s": POSITIVE,
    "teacher.temp_spread": POSITIVE,
    "teacher.min_temp": POSITIVE,
    "monitor.period_iterations": AT_LEAST_ONE,
    "monitor.batch_size": AT_LEAST_ONE,
    "monitor.linear_learning_rates": POSITIVE,
    "monitor.linear_iterations": Range(10),  # 10 epochs of at least one step
    "monitor.seed": NON_NEGATIVE,
    "data.pool_weights": NON_NEGATIVE,  # and a positive sum (cross_checks)
    "data.window_shards": AT_LEAST_ONE,
    "augment.color_jitter_p": UNIT,
    "augment.brightness": UNIT,  # jitter factor drawn in [1 - x, 1 + x]
    "augment.contrast": UNIT,
    "augment.saturation": UNIT,
    "augment.grayscale_p": UNIT,
    "augment.blur_p_global1": UNIT,
    "augment.blur_p_global2": UNIT,
    "augment.blur_p_local": UNIT,
    "augment.blur_sigma": Range(1e-3),  # a Gaussian blur needs sigma > 0
    "augment.solarize_p": UNIT,
    "augment.solarize_threshold": UNIT,
    "augment.gray_mean": UNIT,
    "augment.gray_std": POSITIVE,
    "augment.sector_threshold": UNIT_OPEN_HIGH,  # pixel level in [0, 1); 1 finds no sector
    "augment.sector_min_inside": UNIT,
    "augment.sector_max_tries": AT_LEAST_ONE,
    "augment.speckle_p": UNIT,
    "augment.speckle_sigma": UNIT,
    "augment.speckle_grain": AT_LEAST_ONE,  # grain size in output pixels
    "augment.tgc_p": UNIT,
    "augment.tgc_gain_db": NON_NEGATIVE,
    "augment.tgc_points": AT_LEAST_ONE,
    "augment.attenuation_p": UNIT,
    "augment.attenuation_db": NON_NEGATIVE,
    "augment.gamma_p": UNIT,
    "augment.gamma_range": Range(1e-3),  # drawn log-uniformly: > 0
    "augment.shadow_p": UNIT,
    "augment.shadow_strength": UNIT,
    "augment.shadow_width": Range(1e-3, 1),  # half-width as a fraction of the crop width
}

# [min, max] keys: True where min < max is required (the iBOT mask ratio is drawn from [min, max)).
PAIRS: dict[str, bool] = {
    "ibot.mask_ratio_min_max": True,
    "crops.global_crops_scale": False,
    "crops.local_crops_scale": False,
    "augment.blur_sigma": False,
    "augment.speckle_sigma": False,
    "augment.speckle_grain": False,
    "augment.attenuation_db": False,
    "augment.gamma_range": False,
    "augment.shadow_strength": False,
    "augment.shadow_width": False,
}

# Lists of a fixed length (one value per RGB channel).
LENGTHS: dict[str, int] = {"crops.rgb_mean": 3, "crops.rgb_std": 3}


def is_number(value: Any) -> bool:
    """True for an int or float (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def range_problem(key: str, value: Any) -> str | None:
    """A one-line problem when `value` (already of the right type) is outside `key`'s range, else None."""
    bounds = RANGES.get(key)
    if value is None or bounds is None:
        return None
    if isinstance(value, list):
        if key in LENGTHS and len(value) != LENGTHS[key]:
            return f"{key}: expected {LENGTHS[key]} values, got {value!r}"
        if not all(is_number(v) and v in bounds for v in value):
            return f"{key}: expected every value {bounds}, got {value!r}"
        strict = PAIRS.get(key)
        if strict is not None and len(value) == 2 and (value[0] >= value[1] if strict else value[0] > value[1]):
            return f"{key}: expected [min, max] with min {'<' if strict else '<='} max, got {value!r}"
        return None
    if is_number(value) and value not in bounds:
        return f"{key}: expected {bounds}, got {value!r}"
    return None


def range_problems(flat: Mapping[str, Any], skip: Iterable[str] = ()) -> dict[str, str]:
    """{key: problem} of every value out of range (keys in `skip`, e.g. wrongly typed ones, are not checked)."""
    skip = set(skip)
    return {key: p for key, value in flat.items() if key not in skip and (p := range_problem(key, value))}
