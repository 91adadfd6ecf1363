"""Validated evaluation options: dataclass defaults <- `--config-file` YAML <- CLI flags <- `section.key=value`.

Every option lives in a section dataclass below (`model`, `data`, `features`, `linear`, `knn`,
`finetune`, `segmentation`, `report`, `runtime`); its annotation is its schema (`int`, `float`,
`bool`, `str`, `X | None`, `list[X]`, `Literal[...]` for closed sets). An unknown section or key is
a `ConfigError` suggesting the closest valid one, a wrongly typed value names its key, and all
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
    attention_backend: Literal["auto", "sdpa", "xformers", "naive"] = "auto"


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
    iterations_per_epoch: int | None = None  # default: one pass over the train split
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


def apply(cfg: EvalConfig, flat: Mapping[str, Any], where: str) -> EvalConfig:
    """Set `section.key` values on `cfg` (validated); one `ConfigError` lists every problem."""
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
    if problems:
        raise ConfigError(f"invalid evaluation configuration ({where}):\n  " + "\n  ".join(problems))
    return cfg


def load_eval_config(
    config_file: str | os.PathLike | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> EvalConfig:
    """defaults <- `config_file` <- `flags` ({'section.key': value}, None values skipped) <- `overrides`."""
    cfg = EvalConfig()
    if config_file is not None:
        data = read_yaml(config_file)
        problems = [f"{section}: expected a mapping of keys, got {body!r}" for section, body in data.items()
                    if not isinstance(body, Mapping)]
        if problems:
            raise ConfigError(f"invalid evaluation configuration ({config_file}):\n  " + "\n  ".join(problems))
        apply(cfg, flatten({section: body for section, body in data.items() if body}), str(config_file))
    if flags:
        apply(cfg, {k: v for k, v in flags.items() if v is not None}, "command-line flags")
    apply(cfg, parse_dotlist(overrides), "command-line overrides")
    return cfg


def write_eval_config(cfg: EvalConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (a valid `--config-file` for a rerun)."""
    return write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
