"""What each pretraining key accepts, beyond the type of its default in `ssl_default_config.yaml`.

A key is declared once: its default and its one-line documentation (the comment after it) in the YAML,
and here, as a `dinov3_us.configs.schema.Key`, its type where the default does not show it (a `null` or
`[]` default, or a key that may be set to null), its valid range (every numeric key has one, or a closed
set of `choices`; `tests/configs/test_ranges.py` fails otherwise), the order of a `[min, max]` pair and
the length of a fixed-length list. Closed sets come from the table that uses them (`ARCHS`, `DTYPES`,
...). Keys whose value 0 means "off" allow 0; the comment after a declaration says why it is not the
obvious one. Checks that relate several keys are `cross_checks.RULES`.
"""

from __future__ import annotations

from dinov3_us.configs.schema import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    UNIT_OPEN_HIGH,
    UNIT_OPEN_LOW,
    Key,
    Range,
)
from dinov3_us.dtypes import DTYPES
from dinov3_us.layers.attention_backends import BACKENDS
from dinov3_us.models import ARCHS
from dinov3_us.models.vision_transformer import FFN_LAYERS, NORM_LAYERS

MONITOR_PROBES = ("knn", "linear")
TEACHER_CHECKPOINTS = ("auto", "best", "latest")  # `dinov3_us.weights.resolve.select_checkpoint`


def _schedule(name: str, start: Range, peak: Range, end: Range) -> dict[str, Key]:
    """The keys of one `schedules.<name>` (the v2 schedules): its values' ranges, and its epochs."""
    return {f"schedules.{name}.start": Key(range=start), f"schedules.{name}.peak": Key(range=peak),
            f"schedules.{name}.end": Key(range=end), f"schedules.{name}.warmup_epochs": Key(range=NON_NEGATIVE),
            f"schedules.{name}.cosine_epochs": Key(int | None, range=NON_NEGATIVE)}

KEYS: dict[str, Key] = {
    "compute_precision.param_dtype": Key(choices=DTYPES),
    "compute_precision.reduce_dtype": Key(choices=("bf16", "fp32")),
    "dino.loss_weight": Key(range=NON_NEGATIVE),
    "dino.head_n_prototypes": Key(range=AT_LEAST_ONE),
    "dino.head_bottleneck_dim": Key(range=AT_LEAST_ONE),
    "dino.head_nlayers": Key(range=AT_LEAST_ONE),  # DINOHead silently treats values below 1 as 1
    "dino.head_hidden_dim": Key(range=AT_LEAST_ONE),
    "dino.koleo_loss_weight": Key(range=NON_NEGATIVE),
    "dino.koleo_topk": Key(range=AT_LEAST_ONE),
    "ibot.loss_weight": Key(range=NON_NEGATIVE),
    "ibot.mask_sample_probability": Key(range=UNIT),
    "ibot.mask_ratio_min_max": Key(range=UNIT, order="<"),  # the ratio is drawn from [min, max)
    "ibot.head_n_prototypes": Key(range=AT_LEAST_ONE),
    "ibot.head_bottleneck_dim": Key(range=AT_LEAST_ONE),
    "ibot.head_nlayers": Key(range=AT_LEAST_ONE),
    "ibot.head_hidden_dim": Key(range=AT_LEAST_ONE),
    "gram.loss_weight": Key(range=NON_NEGATIVE),
    "gram.ckpt": Key(str | None),
    "gram.it_load_ema_teacher": Key(range=Range(-1)),  # -1: never copy the EMA teacher
    "gram.update_frequency": Key(range=AT_LEAST_ONE),  # a modulus
    "gram.it_first_update": Key(range=NON_NEGATIVE),
    "gram.max_updates": Key(int | None, range=NON_NEGATIVE),  # null: unlimited; 0: never refresh
    "gram.tokens_used": Key(choices=("all", "masked", "unmasked")),
    "train.batch_size_per_gpu": Key(range=AT_LEAST_ONE),
    "train.seed": Key(range=NON_NEGATIVE),  # numpy seeds are non-negative
    "train.num_workers": Key(range=NON_NEGATIVE),  # 0: load in the main process
    "train.OFFICIAL_EPOCH_LENGTH": Key(range=AT_LEAST_ONE),
    "train.centering": Key(choices=("sinkhorn_knopp", "softmax", "none")),
    "train.log_period": Key(range=AT_LEAST_ONE),  # a modulus
    "train.max_consecutive_nonfinite": Key(range=NON_NEGATIVE),  # 0: stop at the first non-finite step
    "train.selfdistill_alarm_iterations": Key(range=NON_NEGATIVE),  # 0: off
    "student.arch": Key(choices=ARCHS),
    "student.patch_size": Key(range=AT_LEAST_ONE),
    "student.drop_path_rate": Key(range=UNIT_OPEN_HIGH),  # 1 would drop every residual branch
    "student.layerscale": Key(range=NON_NEGATIVE),  # 0: no LayerScale (the blocks test `if init_values`)
    "student.ffn_layer": Key(choices=FFN_LAYERS),
    "student.ffn_ratio": Key(range=POSITIVE),
    "student.norm_layer": Key(choices=NORM_LAYERS),
    "student.n_storage_tokens": Key(range=NON_NEGATIVE),
    "student.in_chans": Key(choices=(1, 3)),
    "student.pos_embed_type": Key(choices=("rope",)),
    "student.pos_embed_rope_base": Key(float | None, range=POSITIVE),  # null: periods from min_period / max_period
    "student.pos_embed_rope_min_period": Key(float | None, range=POSITIVE),
    "student.pos_embed_rope_max_period": Key(float | None, range=POSITIVE),
    "student.pos_embed_rope_normalize_coords": Key(choices=("min", "max", "separate")),
    "student.pos_embed_rope_shift_coords": Key(float | None, range=NON_NEGATIVE),  # uniform shift in [-s, s]
    "student.pos_embed_rope_jitter_coords": Key(float | None, range=AT_LEAST_ONE),  # factor in [1/j, j]: log(j) >= 0
    "student.pos_embed_rope_rescale_coords": Key(float | None, range=AT_LEAST_ONE),  # likewise
    "student.pos_embed_rope_dtype": Key(choices=DTYPES),
    "teacher.momentum_teacher": Key(range=UNIT),
    "teacher.final_momentum_teacher": Key(range=UNIT),
    "teacher.warmup_teacher_temp": Key(range=POSITIVE),  # a softmax temperature divides the logits
    "teacher.teacher_temp": Key(range=POSITIVE),
    "teacher.warmup_teacher_temp_epochs": Key(range=NON_NEGATIVE),
    "teacher.temp_control": Key(choices=("official", "auto")),
    "teacher.temp_spread": Key(range=POSITIVE),
    "teacher.min_temp": Key(range=POSITIVE),
    "optim.epochs": Key(range=AT_LEAST_ONE),
    "optim.optimizer": Key(choices=("adamw",)),
    "optim.weight_decay": Key(range=NON_NEGATIVE),
    "optim.weight_decay_end": Key(range=NON_NEGATIVE),
    "optim.lr": Key(range=POSITIVE),  # lr 0 trains nothing
    "optim.warmup_epochs": Key(range=NON_NEGATIVE),
    "optim.min_lr": Key(range=NON_NEGATIVE),
    "optim.schedule_trunc_extra": Key(range=NON_NEGATIVE),  # 0: plain cosine
    "optim.clip_grad": Key(range=NON_NEGATIVE),  # 0: no clipping
    "optim.freeze_last_layer_epochs": Key(range=NON_NEGATIVE),
    "optim.scaling_rule": Key(choices=("sqrt_wrt_1024", "linear_wrt_256", "none")),
    "optim.patch_embed_lr_mult": Key(range=NON_NEGATIVE),  # 0: frozen patch embedding
    "optim.dino_head_wd_multiplier": Key(range=NON_NEGATIVE),
    "optim.layerwise_decay": Key(range=UNIT_OPEN_LOW),  # lr x decay ** depth: 0 freezes all but the last block
    "optim.adamw_beta1": Key(range=UNIT_OPEN_HIGH),  # torch.optim.AdamW rejects beta >= 1
    "optim.adamw_beta2": Key(range=UNIT_OPEN_HIGH),
    **_schedule("lr", NON_NEGATIVE, POSITIVE, NON_NEGATIVE),
    "schedules.lr.freeze_last_layer_epochs": Key(range=NON_NEGATIVE),
    **_schedule("weight_decay", NON_NEGATIVE, NON_NEGATIVE, NON_NEGATIVE),
    **_schedule("momentum", UNIT, UNIT, UNIT),
    **_schedule("teacher_temp", POSITIVE, POSITIVE, POSITIVE),
    "crops.global_crops_scale": Key(range=UNIT_OPEN_LOW, order="<="),
    "crops.local_crops_number": Key(range=AT_LEAST_ONE),  # the DINO local loss needs local crops
    "crops.local_crops_scale": Key(range=UNIT_OPEN_LOW, order="<="),
    "crops.global_crops_size": Key(range=AT_LEAST_ONE),  # and a multiple of student.patch_size (cross_checks)
    "crops.local_crops_size": Key(range=AT_LEAST_ONE),
    "crops.gram_teacher_crops_size": Key(int | None, range=AT_LEAST_ONE),
    "crops.rgb_mean": Key(range=UNIT, length=3),  # pixels are in [0, 1] when normalised
    "crops.rgb_std": Key(range=POSITIVE, length=3),
    "evaluation.eval_period_iterations": Key(range=NON_NEGATIVE),  # 0: export only at the end
    "evaluation.teacher_checkpoint": Key(choices=TEACHER_CHECKPOINTS),
    "monitor.period_iterations": Key(range=AT_LEAST_ONE),
    "monitor.probes": Key(choices=MONITOR_PROBES, non_empty=True),
    "monitor.select": Key(choices=MONITOR_PROBES),  # and one of monitor.probes (cross_checks)
    "monitor.batch_size": Key(range=AT_LEAST_ONE),
    "monitor.linear_learning_rates": Key(range=POSITIVE),
    "monitor.linear_iterations": Key(range=Range(10)),  # 10 epochs of at least one step
    "monitor.seed": Key(range=NON_NEGATIVE),
    "checkpointing.period": Key(range=AT_LEAST_ONE),
    "checkpointing.max_to_keep": Key(range=AT_LEAST_ONE),
    "checkpointing.keep_every": Key(range=NON_NEGATIVE),  # 0: keep no extra checkpoints
    "runtime.device": Key(choices=("auto", "cpu", "cuda")),
    "runtime.dist_backend": Key(choices=("auto", "nccl", "gloo")),
    "runtime.peak_tflops": Key(range=NON_NEGATIVE),  # 0: datasheet table or measured
    "runtime.start_timeout_s": Key(range=POSITIVE),
    "data.pool_weights": Key(list[float], range=NON_NEGATIVE),  # and a positive sum (cross_checks)
    "data.window_shards": Key(range=AT_LEAST_ONE),
    "attention.backend": Key(choices=BACKENDS),
    "augment.color_jitter_p": Key(range=UNIT),
    "augment.brightness": Key(range=UNIT),  # jitter factor drawn in [1 - x, 1 + x]
    "augment.contrast": Key(range=UNIT),
    "augment.saturation": Key(range=UNIT),
    "augment.grayscale_p": Key(range=UNIT),
    "augment.blur_p_global1": Key(range=UNIT),
    "augment.blur_p_global2": Key(range=UNIT),
    "augment.blur_p_local": Key(range=UNIT),
    "augment.blur_sigma": Key(range=Range(1e-3), order="<="),  # a Gaussian blur needs sigma > 0
    "augment.solarize_p": Key(range=UNIT),
    "augment.solarize_threshold": Key(range=UNIT),
    "augment.gray_mean": Key(range=UNIT),
    "augment.gray_std": Key(range=POSITIVE),
    "augment.sector_threshold": Key(range=UNIT_OPEN_HIGH),  # pixel level in [0, 1); 1 finds no sector
    "augment.sector_min_inside": Key(range=UNIT),
    "augment.sector_max_tries": Key(range=AT_LEAST_ONE),
    "augment.speckle_p": Key(range=UNIT),
    "augment.speckle_sigma": Key(range=UNIT, order="<="),
    "augment.speckle_grain": Key(range=AT_LEAST_ONE, order="<="),
    "augment.tgc_p": Key(range=UNIT),
    "augment.tgc_gain_db": Key(range=NON_NEGATIVE),
    "augment.tgc_points": Key(range=AT_LEAST_ONE),
    "augment.attenuation_p": Key(range=UNIT),
    "augment.attenuation_db": Key(range=NON_NEGATIVE, order="<="),
    "augment.gamma_p": Key(range=UNIT),
    "augment.gamma_range": Key(range=Range(1e-3), order="<="),  # drawn log-uniformly: > 0
    "augment.shadow_p": Key(range=UNIT),
    "augment.shadow_strength": Key(range=UNIT, order="<="),
    "augment.shadow_width": Key(range=Range(1e-3, 1), order="<="),  # half-width, a fraction of the crop width
}
