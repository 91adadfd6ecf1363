"""Validated evaluation options: defaults <- `--config-file` YAML <- CLI flags <- `section.key=value`.

Every option lives in a section dataclass below (`model`, `data`, `features`, `linear`, `knn`,
`finetune`, `segmentation`, `report`, `runtime`) and is declared once, with the mechanism of the
pretraining config (`dinov3_us.configs.schema`): its annotation is its type (`int`, `float`, `bool`,
`str`, `X | None`, `list[X]`) and `field(default, doc, range=..., choices=...)` gives its default, its
one-line documentation and its valid values; `RULES` relate options. An unknown section or key is a
`ConfigError` suggesting the closest valid one, a wrongly typed value names its key and where it was
set, every numeric option has a valid range or a closed set of values, and all problems are reported
at once.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dinov3_us.configs.config import flatten, parse_dotlist, read_yaml
from dinov3_us.configs.schema import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    UNIT_OPEN_HIGH,
    UNIT_OPEN_LOW,
    Range,
    Rule,
    Schema,
    dataclass_schema,
    field,
)
from dinov3_us.fileio import write_atomic
from dinov3_us.layers.attention_backends import BACKENDS
from dinov3_us.models import ARCHS

logger = logging.getLogger("dinov3_us")

# The official linear-probe learning rates (DINOv2/v3 `eval/linear.py`), before the batch/256 scaling.
OFFICIAL_LEARNING_RATES = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1]
SELECT_METRICS = ("weighted_f1", "accuracy", "balanced_accuracy", "macro_f1")
DEVICES, DIST_BACKENDS = ("auto", "cpu", "cuda"), ("auto", "nccl", "gloo")


@dataclass
class ModelConfig:
    """The frozen (or fine-tuned) backbone."""

    pretrained_weights: str | None = field(None, "random, an official .pth, or an exported/converted teacher .pth")
    arch: str | None = field(None, "the architecture (needed for random)", choices=ARCHS)
    in_chans: int | None = field(None, "None: the weights' (random: 1); 1 with RGB weights sums the filters",
                                 choices=(1, 3))
    seed: int = field(0, "initialisation seed of a random backbone", range=NON_NEGATIVE)
    attention_backend: str = field("auto", "attention kernels", choices=BACKENDS)


@dataclass
class DataConfig:
    """Dataset specs (`DIR:split`, see `dinov3_us.data.shards`) and the evaluation preprocessing."""

    train_dataset: str | None = field(None, "shards spec of the train split")
    val_dataset: str | None = field(None, "shards spec of the validation split")
    test_datasets: list[str] = field([], "shards specs of the test splits; the first is the headline")
    image_size: int = field(224, "side of the square network input (a multiple of the patch size)",
                            range=AT_LEAST_ONE)
    resize_mode: str = field("square", "square: squash the whole image | center_crop: shorter side + centre crop",
                             choices=("square", "center_crop"))
    resize_size: int | None = field(None, "center_crop: shorter side before cropping (default image_size / 0.875)",
                                    range=AT_LEAST_ONE)  # and >= data.image_size (RULES)
    mean: list[float] | None = field(None, "None: 0.449 (1 channel) or ImageNet's (3 channels)",
                                     range=UNIT)  # pixels are in [0, 1] when normalised
    std: list[float] | None = field(None, "None: 0.226 (1 channel) or ImageNet's (3 channels)", range=POSITIVE)
    batch_size: int = field(64, "feature extraction / evaluation batch per process", range=AT_LEAST_ONE)
    num_workers: int = field(0, "data-loading workers per process", range=NON_NEGATIVE)
    label_key: str = field("label", "the JSON field holding the target")
    label_bins: int | None = field(None, "quantile bins of a numeric label_key, edges from the train split",
                                   range=Range(2))  # one bin is no classification
    classes: list[str] | None = field(None, "default: the manifest's label order")


@dataclass
class FeaturesConfig:
    """Frozen-feature extraction."""

    cache_dir: str | None = field(None, "write/read features here (keyed by weights, data and preprocessing)")
    progress: bool = field(True, "progress bars")


@dataclass
class LinearConfig:
    """The grid of linear heads trained together on cached features (DINOv2/v3 protocol by default)."""

    learning_rates: list[float] = field(OFFICIAL_LEARNING_RATES, "the lr grid", range=POSITIVE, non_empty=True)
    n_last_blocks: list[int] = field([1, 4], "blocks whose CLS tokens are concatenated", range=AT_LEAST_ONE,
                                     non_empty=True)
    avgpool: list[bool] = field([False, True], "also the mean patch token", non_empty=True)
    losses: list[str] = field(["ce"], "training losses of the grid", choices=("ce", "focal", "label_smoothing"),
                              non_empty=True)
    epochs: int = field(10, "passes over the train split", range=AT_LEAST_ONE)
    iterations_per_epoch: int | None = field(None, "default: one pass over the train split, at least 10 steps",
                                             range=AT_LEAST_ONE)
    batch_size: int = field(128, "batch of cached features", range=AT_LEAST_ONE)
    scale_lr: bool = field(True, "lr x batch_size x world_size / 256")
    momentum: float = field(0.9, "SGD momentum", range=UNIT_OPEN_HIGH)
    weight_decay: float = field(0.0, "SGD weight decay", range=NON_NEGATIVE)
    class_weighting: bool = field(False, "CE weights N / (C * count_c)")
    focal_gamma: float = field(2.0, "focal loss exponent (0: plain cross-entropy)", range=NON_NEGATIVE)
    label_smoothing: float = field(0.1, "of the label_smoothing loss", range=UNIT_OPEN_HIGH)
    patience: int | None = field(None, "early stopping per head on val (epochs without improvement); None: off",
                                 range=AT_LEAST_ONE)  # 0 would stop every head after one epoch
    select_metric: str = field("weighted_f1", "the val metric that selects the head", choices=SELECT_METRICS)
    seed: int = field(0, "seed of the heads and of the data order", range=NON_NEGATIVE)
    label_fractions: list[float] = field([], "label-efficiency curve, e.g. [0.01, 0.05, 1.0]", range=UNIT_OPEN_LOW)
    label_seeds: list[int] = field([0, 1, 2], "seeds of the label subsets", range=NON_NEGATIVE)


@dataclass
class KnnConfig:
    """Weighted k-nearest-neighbours on the L2-normalised CLS token of the last block."""

    ks: list[int] = field([10, 20, 100, 200], "the ks tried", range=AT_LEAST_ONE, non_empty=True)
    temperature: float = field(0.07, "of the neighbours' weights", range=POSITIVE)
    default_k: int = field(20, "reported when no val split selects k", range=AT_LEAST_ONE)
    select_metric: str = field("weighted_f1", "the val metric that selects k", choices=SELECT_METRICS)


@dataclass
class FinetuneConfig:
    """Full fine-tuning: layer-wise lr decay, class weighting, early stopping on val."""

    epochs: int = field(30, "passes over the train split", range=AT_LEAST_ONE)
    batch_size: int = field(32, "per process", range=AT_LEAST_ONE)
    lr: float = field(1e-4, "base lr, x batch_size x world_size / 256 when scale_lr", range=POSITIVE)
    scale_lr: bool = field(True, "scale lr with the batch")
    layer_decay: float = field(0.75, "lr x layer_decay ** depth", range=UNIT_OPEN_LOW)
    patch_embed_lr_mult: float = field(1.0, "lr multiplier of the patch embedding", range=NON_NEGATIVE)
    weight_decay: float = field(0.05, "AdamW weight decay", range=NON_NEGATIVE)
    warmup_epochs: int = field(2, "linear lr warmup", range=NON_NEGATIVE)  # and <= finetune.epochs (RULES)
    min_lr: float = field(1e-6, "end of the cosine schedule", range=NON_NEGATIVE)
    clip_grad: float | None = field(3.0, "0 or None: no clipping", range=NON_NEGATIVE)
    drop_path_rate: float = field(0.1, "stochastic depth", range=UNIT_OPEN_HIGH)
    class_weighting: bool = field(True, "CE weights N / (C * count_c)")
    label_smoothing: float = field(0.0, "of the cross-entropy", range=UNIT_OPEN_HIGH)
    avgpool: bool = field(True, "head on [CLS, mean patch token] (else CLS only)")
    augment: bool = field(True, "random resized crop + horizontal flip on train")
    crop_scale: list[float] = field([0.6, 1.0], "[min, max] fractions of the image area of the random crop",
                                    range=UNIT_OPEN_LOW, order="<=")
    hflip: float = field(0.5, "probability of a horizontal flip", range=UNIT)
    patience: int | None = field(5, "early stopping on val (epochs without improvement); None: off",
                                 range=AT_LEAST_ONE)
    select_metric: str = field("weighted_f1", "the val metric that selects the epoch", choices=SELECT_METRICS)
    seed: int = field(0, "seed of the head and of the data order", range=NON_NEGATIVE)


@dataclass
class SegmentationConfig:
    """Linear probe on patch tokens for binary masks (HC18 head): a grid of lrs, Dice on val selects."""

    learning_rates: list[float] = field([1e-3, 1e-2, 1e-1, 1.0, 10.0], "the lr grid", range=POSITIVE,
                                        non_empty=True)
    n_last_blocks: int = field(1, "blocks whose patch tokens are concatenated", range=AT_LEAST_ONE)
    epochs: int = field(20, "passes over the train split", range=AT_LEAST_ONE)
    batch_size: int = field(16, "batch of images", range=AT_LEAST_ONE)
    scale_lr: bool = field(True, "lr x batch_size x world_size / 256")
    momentum: float = field(0.9, "SGD momentum", range=UNIT_OPEN_HIGH)
    weight_decay: float = field(0.0, "SGD weight decay", range=NON_NEGATIVE)
    foreground_threshold: int = field(128, "mask pixels >= this (0-255) are foreground",
                                      range=Range(1, 255))  # 0 would make every pixel foreground
    seed: int = field(0, "seed of the heads and of the data order", range=NON_NEGATIVE)


@dataclass
class ReportConfig:
    """Confidence intervals and figures."""

    bootstrap: int = field(1000, "resamples of the test predictions (0: no confidence intervals)",
                           range=NON_NEGATIVE)
    ci: float = field(0.95, "confidence level", range=Range(0, 1, low_open=True, high_open=True))
    seed: int = field(0, "seed of the resamples", range=NON_NEGATIVE)
    baseline: str = field("none", "random: also evaluate a random init of the same architecture on the same splits, "
                          "with the paired difference and the chance level (OUT/baseline_random/)",
                          choices=("none", "random"))


@dataclass
class RuntimeConfig:
    """Device and process group."""

    device: str = field("auto", "auto (cuda if available) | cpu | cuda", choices=DEVICES)
    dist_backend: str = field("auto", "auto (nccl on cuda, gloo on cpu) | nccl | gloo", choices=DIST_BACKENDS)
    start_timeout_s: float = field(300.0, "how long the ranks wait for a sibling that never arrives at start-up",
                                   range=POSITIVE)


@dataclass
class EvalConfig:
    """Every evaluation option, by section."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    features: FeaturesConfig = dataclasses.field(default_factory=FeaturesConfig)
    linear: LinearConfig = dataclasses.field(default_factory=LinearConfig)
    knn: KnnConfig = dataclasses.field(default_factory=KnnConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    segmentation: SegmentationConfig = dataclasses.field(default_factory=SegmentationConfig)
    report: ReportConfig = dataclasses.field(default_factory=ReportConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        """Plain nested dicts (for results.json and config.yaml)."""
        return dataclasses.asdict(self)


def _warmup(c):
    if c["finetune.warmup_epochs"] > c["finetune.epochs"]:
        return [f"finetune.warmup_epochs: expected <= finetune.epochs ({c['finetune.epochs']}), "
                f"got {c['finetune.warmup_epochs']}"]
    return []


def _centre_crop(c):
    size, image = c["data.resize_size"], c["data.image_size"]
    if c["data.resize_mode"] == "center_crop" and size is not None and size < image:
        return [f"data.resize_size: expected >= data.image_size ({image}) for the centre crop, got {size}"]
    return []


def _channel_stats(key: str) -> Rule:
    def check(c):
        values, chans = c[key], c["model.in_chans"]
        if values is not None and chans is not None and len(values) != chans:
            return [f"{key}: expected {chans} values (model.in_chans), got {values!r}"]
        return []

    return Rule((key, "model.in_chans"), check)


def _mean_std(c):
    mean, std = c["data.mean"], c["data.std"]
    if mean is not None and std is not None and len(mean) != len(std):
        return [f"data.mean / data.std: expected as many values, got {mean!r} and {std!r}"]
    return []


RULES: tuple[Rule, ...] = (
    Rule(("finetune.warmup_epochs", "finetune.epochs"), _warmup),
    Rule(("data.resize_mode", "data.resize_size", "data.image_size"), _centre_crop),
    _channel_stats("data.mean"),
    _channel_stats("data.std"),
    Rule(("data.mean", "data.std"), _mean_std),
)


@functools.cache
def eval_schema() -> Schema:
    """The `Schema` of `EvalConfig`: its fields' declarations and `RULES`."""
    return dataclass_schema(EvalConfig, RULES, "evaluation configuration")


def _flat(cfg: EvalConfig) -> dict[str, Any]:
    return {f"{section}.{name}": value for section, body in cfg.to_dict().items() for name, value in body.items()}


def _build(flat: Mapping[str, Any]) -> EvalConfig:
    sections: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = value
    classes = {f.name: f.default_factory for f in dataclasses.fields(EvalConfig)}
    return EvalConfig(**{section: classes[section](**values) for section, values in sections.items()})


def check_eval_config(cfg: EvalConfig) -> EvalConfig:
    """Raise one `ConfigError` listing every option of `cfg` of the wrong type, out of its range, or
    inconsistent with another; else return `cfg`."""
    eval_schema().resolve([(None, _flat(cfg))])
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
    layers = [(str(config_file), flatten(read_yaml(config_file)))] if config_file is not None else []
    if flags:
        layers.append(("command-line flags", {k: v for k, v in flags.items() if v is not None}))
    layers.append(("command-line overrides", parse_dotlist(overrides)))
    return _build(eval_schema().resolve(layers))


def write_eval_config(cfg: EvalConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (a valid `--config-file` for a rerun)."""
    return write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
