"""Validated evaluation options: dataclass defaults <- `--config-file` YAML <- CLI flags <- `section.key=value`.

Every option lives in a section dataclass below (`model`, `data`, `features`, `linear`, `knn`,
`finetune`, `segmentation`, `report`, `runtime`); its annotation is its schema (`int`, `float`,
`bool`, `str`, `X | None`, `list[X]`, `Literal[...]` for closed sets). An unknown section or key is
a `ConfigError` suggesting the closest valid one, a wrongly typed value names its key, every numeric
option has a valid range (`RANGES`) and a few options are checked together (`cross_problems`); all
problems are reported at once (the same rules as the pretraining config, `dinov3_us.configs`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dinov3_us.configs.config import flatten, parse_dotlist, read_yaml, suggest_key, type_ok
from dinov3_us.configs.ranges import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT, UNIT_OPEN_HIGH, UNIT_OPEN_LOW, Range
from dinov3_us.errors import ConfigError
from dinov3_us.fileio import write_atomic

logger = logging.getLogger("dinov3_us")

# The official linear-probe learning rates (DINOv2/v3 `eval/linear.py`), before the batch/256 scaling.
OFFICIAL_LEARNING_RATES = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1]
SelectMetric = Literal["weighted_f1", "accuracy", "balanced_accuracy", "macro_f1"]


@dataclass
class ModelConfig:
    """The frozen (or fine-tuned) backbone."""

    pretrained_weights: str | None = None  # "random", an official .pth, or an exported/converted teacher .pth
    arch: Literal["vit_test", "vit_tiny", "vit_small", "vit_base", "vit_large"] | None = None  # needed for random
    in_chans: Literal[1, 3] | None = None  # None: the weights' (random: 1); 1 with RGB weights sums the filters
    seed: int = 0  # initialisation seed of a random backbone
    attention_backend: Literal["auto", "sdpa", "xformers", "matmul"] = "auto"


@dataclass
class DataConfig:
    """Dataset specs (`DIR:split`, see `dinov3_us.data.shards`) and the evaluation preprocessing."""

    train_dataset: str | None = None
    val_dataset: str | None = None
    test_datasets: list[str] = field(default_factory=list)
    image_size: int = 224  # side of the square network input (a multiple of the patch size)
    resize_mode: Literal["square", "center_crop"] = "square"  # squash the whole image | shorter side + centre crop
    resize_size: int | None = None  # center_crop: shorter side before cropping (default image_size / 0.875)
    mean: list[float] | None = None  # None: 0.449 (1 channel) or ImageNet's (3 channels)
    std: list[float] | None = None
    batch_size: int = 64  # feature extraction / evaluation batch per process
    num_workers: int = 0
    label_key: str = "label"  # the JSON field holding the target
    label_bins: int | None = None  # quantile bins of a numeric label_key, edges from the train split
    classes: list[str] | None = None  # default: the manifest's label order


@dataclass
class FeaturesConfig:
    """Frozen-feature extraction."""

    cache_dir: str | None = None  # write/read features here (keyed by weights, data and preprocessing)
    progress: bool = True


@dataclass
class LinearConfig:
    """The grid of linear heads trained together on cached features (DINOv2/v3 protocol by default)."""

    learning_rates: list[float] = field(default_factory=lambda: list(OFFICIAL_LEARNING_RATES))
    n_last_blocks: list[int] = field(default_factory=lambda: [1, 4])
    avgpool: list[bool] = field(default_factory=lambda: [False, True])
    losses: list[Literal["ce", "focal", "label_smoothing"]] = field(default_factory=lambda: ["ce"])
    epochs: int = 10
    iterations_per_epoch: int | None = None  # default: one pass over the train split, at least 10 steps
    batch_size: int = 128
    scale_lr: bool = True  # lr x batch_size x world_size / 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    class_weighting: bool = False  # CE weights N / (C * count_c)
    focal_gamma: float = 2.0
    label_smoothing: float = 0.1
    patience: int | None = None  # early stopping per head on val (epochs without improvement); None: off
    select_metric: SelectMetric = "weighted_f1"
    seed: int = 0
    label_fractions: list[float] = field(default_factory=list)  # label-efficiency curve, e.g. [0.01, 0.05, 1.0]
    label_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class KnnConfig:
    """Weighted k-nearest-neighbours on the L2-normalised CLS token of the last block."""

    ks: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    temperature: float = 0.07
    default_k: int = 20  # reported when no val split selects k
    select_metric: SelectMetric = "weighted_f1"


@dataclass
class FinetuneConfig:
    """Full fine-tuning: layer-wise lr decay, class weighting, early stopping on val."""

    epochs: int = 30
    batch_size: int = 32  # per process
    lr: float = 1e-4  # base lr, x batch_size x world_size / 256 when scale_lr
    scale_lr: bool = True
    layer_decay: float = 0.75
    patch_embed_lr_mult: float = 1.0
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    min_lr: float = 1e-6
    clip_grad: float | None = 3.0
    drop_path_rate: float = 0.1
    class_weighting: bool = True
    label_smoothing: float = 0.0
    avgpool: bool = True  # head on [CLS, mean patch token] (else CLS only)
    augment: bool = True  # random resized crop + horizontal flip on train
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    hflip: float = 0.5
    patience: int | None = 5
    select_metric: SelectMetric = "weighted_f1"
    seed: int = 0


@dataclass
class SegmentationConfig:
    """Linear probe on patch tokens for binary masks (HC18 head): a grid of lrs, Dice on val selects."""

    learning_rates: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0])
    n_last_blocks: int = 1
    epochs: int = 20
    batch_size: int = 16
    scale_lr: bool = True
    momentum: float = 0.9
    weight_decay: float = 0.0
    foreground_threshold: int = 128  # mask pixels >= this (0-255) are foreground
    seed: int = 0


@dataclass
class ReportConfig:
    """Confidence intervals and figures."""

    bootstrap: int = 1000  # resamples of the test predictions
    ci: float = 0.95
    seed: int = 0
    # random: also evaluate a random initialisation of the same architecture on the same splits, and
    # report the paired difference (patients resampled) and the chance level (OUT/baseline_random/)
    baseline: Literal["none", "random"] = "none"


@dataclass
class RuntimeConfig:
    """Device and process group."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    start_timeout_s: float = 300.0  # how long the ranks wait for a sibling that never arrives at start-up


@dataclass
class EvalConfig:
    """Every evaluation option, by section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        """Plain nested dicts (for results.json and config.yaml)."""
        return dataclasses.asdict(self)


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp) -> tuple[bool, Any]:
    """(ok, value) of `value` checked against the annotation `tp`; numeric strings become floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is not type(None):
                ok, out = _coerce(value, arg)
                if ok:
                    return True, out
        return False, value
    if origin is Literal:
        return (value in args and type(value) in {type(a) for a in args}), value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        items = [_coerce(v, args[0]) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if tp is float and isinstance(value, str):  # PyYAML reads 5e-4 (no dot) as a string
        try:
            return True, float(value)
        except ValueError:
            return False, value
    if tp is float and type_ok(value, float):
        return True, float(value)
    return type_ok(value, tp), value


def schema() -> dict[str, Any]:
    """{'section.key': annotation} of every option."""
    out = {}
    for section in dataclasses.fields(EvalConfig):
        section_cls = typing.get_type_hints(EvalConfig)[section.name]
        for name, tp in typing.get_type_hints(section_cls).items():
            out[f"{section.name}.{name}"] = tp
    return out


# The valid range of every numeric option (of each item for a list); `null` is never range-checked.
RANGES: dict[str, Range] = {
    "model.seed": NON_NEGATIVE,
    "runtime.start_timeout_s": POSITIVE,
    "data.image_size": AT_LEAST_ONE,
    "data.resize_size": AT_LEAST_ONE,  # and >= data.image_size (cross_problems)
    "data.mean": UNIT,  # pixels are in [0, 1] when normalised
    "data.std": POSITIVE,
    "data.batch_size": AT_LEAST_ONE,
    "data.num_workers": NON_NEGATIVE,
    "data.label_bins": Range(2),  # one bin is no classification
    "linear.learning_rates": POSITIVE,
    "linear.n_last_blocks": AT_LEAST_ONE,
    "linear.epochs": AT_LEAST_ONE,
    "linear.iterations_per_epoch": AT_LEAST_ONE,
    "linear.batch_size": AT_LEAST_ONE,
    "linear.momentum": UNIT_OPEN_HIGH,
    "linear.weight_decay": NON_NEGATIVE,
    "linear.focal_gamma": NON_NEGATIVE,  # 0: plain cross-entropy
    "linear.label_smoothing": UNIT_OPEN_HIGH,
    "linear.patience": AT_LEAST_ONE,  # null: no early stopping; 0 would stop every head after one epoch
    "linear.seed": NON_NEGATIVE,
    "linear.label_fractions": UNIT_OPEN_LOW,
    "linear.label_seeds": NON_NEGATIVE,
    "knn.ks": AT_LEAST_ONE,
    "knn.temperature": POSITIVE,
    "knn.default_k": AT_LEAST_ONE,
    "finetune.epochs": AT_LEAST_ONE,
    "finetune.batch_size": AT_LEAST_ONE,
    "finetune.lr": POSITIVE,
    "finetune.layer_decay": UNIT_OPEN_LOW,
    "finetune.patch_embed_lr_mult": NON_NEGATIVE,
    "finetune.weight_decay": NON_NEGATIVE,
    "finetune.warmup_epochs": NON_NEGATIVE,  # and <= finetune.epochs (cross_problems)
    "finetune.min_lr": NON_NEGATIVE,
    "finetune.clip_grad": NON_NEGATIVE,  # 0 or null: no clipping
    "finetune.drop_path_rate": UNIT_OPEN_HIGH,
    "finetune.label_smoothing": UNIT_OPEN_HIGH,
    "finetune.crop_scale": UNIT_OPEN_LOW,  # [min, max] fractions of the image area
    "finetune.hflip": UNIT,
    "finetune.patience": AT_LEAST_ONE,
    "finetune.seed": NON_NEGATIVE,
    "segmentation.learning_rates": POSITIVE,
    "segmentation.n_last_blocks": AT_LEAST_ONE,
    "segmentation.epochs": AT_LEAST_ONE,
    "segmentation.batch_size": AT_LEAST_ONE,
    "segmentation.momentum": UNIT_OPEN_HIGH,
    "segmentation.weight_decay": NON_NEGATIVE,
    "segmentation.foreground_threshold": Range(1, 255),  # 0 would make every pixel foreground
    "segmentation.seed": NON_NEGATIVE,
    "report.bootstrap": NON_NEGATIVE,  # 0: no confidence intervals
    "report.ci": Range(0, 1, low_open=True, high_open=True),
    "report.seed": NON_NEGATIVE,
}

# Lists that must not be empty (each is a grid, or the ks of kNN) and [min, max] lists.
NON_EMPTY = ("linear.learning_rates", "linear.n_last_blocks", "linear.avgpool", "linear.losses", "knn.ks",
             "segmentation.learning_rates")
PAIRS = ("finetune.crop_scale",)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def range_problem(key: str, value: Any) -> str | None:
    """A one-line problem when `value` (already of the right type) is outside `key`'s range, else None."""
    if key in NON_EMPTY and value == []:
        return f"{key}: expected at least one value, got []"
    bounds = RANGES.get(key)
    if value is None or bounds is None:
        return None
    if isinstance(value, list):
        if not all(_number(v) and v in bounds for v in value):
            return f"{key}: expected every value {bounds}, got {value!r}"
        if key in PAIRS and (len(value) != 2 or value[0] > value[1]):
            return f"{key}: expected [min, max] with min <= max, got {value!r}"
        return None
    return f"{key}: expected {bounds}, got {value!r}" if _number(value) and value not in bounds else None


def cross_problems(cfg: EvalConfig, skip: Iterable[str] = ()) -> list[str]:
    """Problems between options of a complete config; a check involving a key in `skip` is not run."""
    skip, problems = set(skip), []
    data, ft = cfg.data, cfg.finetune

    def check(keys: tuple[str, ...], bad: bool, message: str) -> None:
        if bad and not skip & set(keys):
            problems.append(message)

    check(("finetune.warmup_epochs", "finetune.epochs"), ft.warmup_epochs > ft.epochs,
          f"finetune.warmup_epochs: expected <= finetune.epochs ({ft.epochs}), got {ft.warmup_epochs}")
    check(("data.resize_size", "data.image_size"),
          data.resize_mode == "center_crop" and data.resize_size is not None and data.resize_size < data.image_size,
          f"data.resize_size: expected >= data.image_size ({data.image_size}) for the centre crop, "
          f"got {data.resize_size}")
    for key in ("mean", "std"):
        values = getattr(data, key)
        check((f"data.{key}",), values is not None and cfg.model.in_chans is not None
              and len(values) != cfg.model.in_chans,
              f"data.{key}: expected {cfg.model.in_chans} values (model.in_chans), got {values!r}")
    check(("data.mean", "data.std"), data.mean is not None and data.std is not None
          and len(data.mean) != len(data.std),
          f"data.mean / data.std: expected as many values, got {data.mean!r} and {data.std!r}")
    return problems


def value_problems(cfg: EvalConfig) -> list[str]:
    """Every range problem of `cfg`, and every cross-option problem among the options in range."""
    flat = {f"{section}.{name}": value for section, body in cfg.to_dict().items() for name, value in body.items()}
    ranges = {key: p for key, value in flat.items() if (p := range_problem(key, value))}
    return list(ranges.values()) + cross_problems(cfg, ranges)


def _apply(cfg: EvalConfig, flat: Mapping[str, Any]) -> list[str]:
    """Set the well-typed `section.key` values of `flat` on `cfg`; the problem lines of the others."""
    types_ = schema()
    problems = []
    for key, value in flat.items():
        if key not in types_:
            problems.append(f"unknown key {key!r}{suggest_key(key, types_)}")
            continue
        ok, value = _coerce(value, types_[key])
        if not ok:
            problems.append(f"{key}: expected {_describe(types_[key])}, got {value!r}")
            continue
        section, name = key.split(".", 1)
        setattr(getattr(cfg, section), name, value)
    return problems


def _raise(problems: list[str], where: str | None) -> None:
    if problems:
        header = f"invalid evaluation configuration ({where})" if where else "invalid evaluation configuration"
        raise ConfigError(header + ":\n  " + "\n  ".join(problems))


def apply(cfg: EvalConfig, flat: Mapping[str, Any], where: str) -> EvalConfig:
    """Set `section.key` values on `cfg` (types checked); one `ConfigError` lists every problem.

    Ranges need the complete config: `load_eval_config` and `check_eval_config` apply them.
    """
    _raise(_apply(cfg, flat), where)
    return cfg


def check_eval_config(cfg: EvalConfig) -> EvalConfig:
    """Raise one `ConfigError` listing every option of `cfg` out of its range (or inconsistent); else `cfg`."""
    _raise(value_problems(cfg), None)
    return cfg


def load_eval_config(
    config_file: str | os.PathLike | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> EvalConfig:
    """defaults <- `config_file` <- `flags` ({'section.key': value}, None values skipped) <- `overrides`.

    One `ConfigError` lists every unknown key and wrong type (each followed by where it was set), every
    value out of range and every inconsistent combination.
    """
    cfg = EvalConfig()
    layers = []
    if config_file is not None:
        data = read_yaml(config_file)
        problems = [f"{section}: expected a mapping of keys, got {body!r}" for section, body in data.items()
                    if not isinstance(body, Mapping)]
        _raise(problems, str(config_file))
        layers.append((str(config_file), flatten({section: body for section, body in data.items() if body})))
    if flags:
        layers.append(("command-line flags", {k: v for k, v in flags.items() if v is not None}))
    layers.append(("command-line overrides", parse_dotlist(overrides)))
    problems = [f"{line} ({where})" for where, flat in layers for line in _apply(cfg, flat)]
    _raise(problems + value_problems(cfg), None)  # a wrongly typed key keeps its earlier (valid) value
    return cfg


def write_eval_config(cfg: EvalConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (a valid `--config-file` for a rerun)."""
    return write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
