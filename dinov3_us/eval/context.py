"""`EvalContext`: what every evaluation protocol shares: config, output folder, backbone, splits, features.

A protocol (`dinov3_us.eval.protocols`) gets a context, calls `load()`, `features()` and
`base_results()`, and returns its results; `write_outputs()` writes `OUTDIR/results.json`,
`summary.md`, figures and `config.yaml` on rank 0.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import dinov3_us
from dinov3_us.distributed import DistInfo
from dinov3_us.errors import ConfigError
from dinov3_us.eval.backbone import (
    EvalBackbone,
    load_eval_backbone,
    random_like,
)
from dinov3_us.eval.config import EvalConfig, write_eval_config
from dinov3_us.eval.data import EvalDataset, EvalTransform, assign_targets, require_labels, unique_names
from dinov3_us.eval.defaults import with_n_last_blocks_clipped, with_trained_image_size
from dinov3_us.eval.features import FeatureSet, extract_features
from dinov3_us.eval.report import write_report
from dinov3_us.weights.resolve import resolve_weights
from dinov3_us.weights.sidecar import sidecar_path, trained_img_size

logger = logging.getLogger("dinov3_us")

@dataclass
class EvalContext:
    """One evaluation run: config, output folder, process group, backbone and the labelled splits."""

    task: str
    cfg: EvalConfig
    out_dir: Path
    info: DistInfo
    backbone: EvalBackbone | None = None
    transform: EvalTransform | None = None
    train: EvalDataset | None = None
    val: EvalDataset | None = None
    tests: dict[str, EvalDataset] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    like: EvalBackbone | None = None  # evaluate a random initialisation of this backbone's architecture instead
    explicit: Collection[str] | None = None  # the `section.key`s the user set (None: unknown; `eval.defaults`)
    warnings: list[str] = field(default_factory=list)  # results.json `warnings` and summary.md lines

    @property
    def progress(self) -> bool:
        """Progress bars on (rank 0 only draws them)."""
        return self.cfg.features.progress

    def load(self, *, need_val: bool = True, with_mask: bool = False, labelled: bool = True, **model_kwargs) -> None:
        """Load the backbone (on the run's device) and the splits; assign the targets.

        Defaults the user did not set are adapted to the backbone first (`dinov3_us.eval.defaults`):
        `self.cfg` is then the resolved config (what config.yaml and results.json record).
        """
        start = time.perf_counter()
        m = self.cfg.model
        if self.like is not None:
            self.backbone = random_like(self.like, m.seed, m.attention_backend, **model_kwargs)
        else:
            weights = m.pretrained_weights
            if weights and weights != "random":
                weights = resolve_weights(weights).require_file()
                self.cfg = with_trained_image_size(self.cfg, trained_img_size(weights),
                                                   sidecar_path(weights).name, self.explicit)
            self.backbone = load_eval_backbone(weights, m.arch, m.in_chans, self.cfg.data.image_size, seed=m.seed,
                                               attention_backend=m.attention_backend, **model_kwargs)
        model = self.backbone.model
        if self.task == "linear":
            self.cfg = with_n_last_blocks_clipped(self.cfg, model.n_blocks, self.explicit)
        d = self.cfg.data
        if d.image_size % model.patch_size:
            raise ConfigError(f"data.image_size={d.image_size} is not a multiple of the patch size {model.patch_size}")
        model.to(self.info.device)
        self.transform = EvalTransform(d.image_size, model.in_chans, d.resize_mode, d.resize_size,
                                       tuple(d.mean) if d.mean else None, tuple(d.std) if d.std else None)
        if not d.train_dataset:
            raise ConfigError("no train split: give --train-dataset (or data.train_dataset in the config)")
        if need_val and not d.val_dataset:
            raise ConfigError(f"{self.task} selects on a validation split: give --val-dataset")
        if not d.test_datasets:
            raise ConfigError("no test split: give --test-datasets (one or more)")
        classes = d.classes if d.label_key == "label" else None

        def make(spec):
            return EvalDataset(spec, self.transform, with_mask=with_mask, classes=classes)

        self.train = make(d.train_dataset)
        self.val = make(d.val_dataset) if d.val_dataset else None
        names = [n if n not in ("train", "val") else f"test:{n}" for n in unique_names(list(d.test_datasets))]
        self.tests = {name: make(spec) for name, spec in zip(names, d.test_datasets)}
        splits = [self.train, *([self.val] if self.val else []), *self.tests.values()]
        if labelled:
            self.classes = assign_targets(splits, d.label_key, d.label_bins, d.classes)
            if len(self.classes) < 2:
                raise ConfigError(f"{self.train.spec}: {len(self.classes)} classes; a classifier needs >= 2 "
                                  "(unlabelled sets such as HC18 need data.label_key / data.label_bins)")
            for role, ds in [("train", self.train), ("val", self.val), *self.tests.items()]:
                if ds is not None:
                    require_labels(ds, role)
            for name, ds in self.tests.items():
                present = [self.classes[i] for i in np.unique(ds.targets[ds.targets >= 0])]
                if len(present) < 2:
                    self.warn(f"test set {name} ({ds.spec}) has {len(present)} class present ({', '.join(present)}): "
                              "its scores (and their CIs) do not measure telling the classes apart")
        self.timing["load_s"] = time.perf_counter() - start

    def warn(self, message: str) -> None:
        """Log a WARNING and keep it for results.json (`warnings`) and summary.md."""
        logger.warning(message)
        self.warnings.append(message)

    def splits(self) -> dict[str, EvalDataset]:
        """{'train', 'val' (if any), test names...} -> dataset."""
        out = {"train": self.train}
        if self.val is not None:
            out["val"] = self.val
        return out | self.tests

    def features(self, ds: EvalDataset, name: str, n_blocks: int = 1, patch_blocks: int = 0) -> FeatureSet:
        """Frozen features of one split (computed once, or read from the cache dir)."""
        d = self.cfg.data
        fs = extract_features(
            self.backbone.model, ds, n_blocks=n_blocks, patch_blocks=patch_blocks, batch_size=d.batch_size,
            num_workers=d.num_workers, device=self.info.device, name=name, progress=self.progress,
            model_id={"sha256": self.backbone.sha256, "arch": self.backbone.arch},
            cache_dir=self.cfg.features.cache_dir,
        )
        self.timing["features_s"] = self.timing.get("features_s", 0.0) + fs.seconds
        return fs

    def base_results(self) -> dict:
        """The fields every results.json has (metrics are added by the task)."""
        d = self.cfg.data
        return {
            "task": self.task,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dinov3_us_version": getattr(dinov3_us, "__version__", "0.1.0"),
            "world_size": self.info.world_size,
            "weights": self.backbone.describe(),
            "datasets": {"train": d.train_dataset, "val": d.val_dataset,
                         "test": dict(zip(self.tests, d.test_datasets))},
            "classes": list(self.classes),
            "n": {name: len(ds) for name, ds in self.splits().items()},
            "class_counts": {name: np.bincount(ds.targets[ds.targets >= 0], minlength=len(self.classes)).tolist()
                             for name, ds in self.splits().items()},
        } | ({"warnings": list(self.warnings)} if self.warnings else {})


def write_outputs(ctx: EvalContext, results: dict, start: float) -> None:
    """Timing and config into `results`; write the run's report, config.yaml beside it (rank 0)."""
    ctx.timing["total_s"] = time.perf_counter() - start
    results["timing"] = {k: round(v, 3) for k, v in ctx.timing.items()}
    results["config"] = ctx.cfg.to_dict()
    write_eval_config(ctx.cfg, ctx.out_dir / "config.yaml")
    write_report(results, ctx.out_dir)
