"""What every evaluation command shares: flags -> config, process group, backbone, splits, features, outputs.

`cli_main(task, runner, argv)` is the body of each `tools/eval_*.py`: it parses the common flags
(plus `section.key=value` overrides), resolves the `EvalConfig`, starts the process group (torchrun,
srun or a plain process), calls `runner(ctx) -> results` (results on rank 0, None elsewhere) and
writes `OUTDIR/results.json`, `summary.md`, figures, `config.yaml` and `log.txt` on rank 0. User
errors (`DinoUSError`) become a message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import dinov3_us
from dinov3_us.configs.config import split_overrides
from dinov3_us.distributed import DistInfo, destroy_distributed, init_distributed
from dinov3_us.errors import ConfigError, DinoUSError
from dinov3_us.eval.backbone import EvalBackbone, load_eval_backbone, random_like
from dinov3_us.eval.config import EvalConfig, load_eval_config, write_eval_config
from dinov3_us.eval.data import EvalDataset, EvalTransform, assign_targets, require_labels, unique_names
from dinov3_us.eval.features import FeatureSet, extract_features
from dinov3_us.eval.paired import versus_random
from dinov3_us.eval.report import write_report
from dinov3_us.log import setup_logging

logger = logging.getLogger("dinov3_us")

# command-line flag -> config key
FLAG_KEYS = {
    "pretrained_weights": "model.pretrained_weights",
    "arch": "model.arch",
    "in_chans": "model.in_chans",
    "train_dataset": "data.train_dataset",
    "val_dataset": "data.val_dataset",
    "test_datasets": "data.test_datasets",
    "image_size": "data.image_size",
    "batch_size": "data.batch_size",
    "num_workers": "data.num_workers",
    "cache_dir": "features.cache_dir",
}


def build_parser(description: str) -> argparse.ArgumentParser:
    """The flags every evaluation command takes."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", help="evaluation YAML (e.g. configs/eval/fpdb_brain_planes.yaml)")
    p.add_argument("--pretrained-weights", help="'random', an official DINOv3 .pth, or an exported teacher .pth")
    p.add_argument("--arch", help="vit_test | vit_tiny | vit_small | vit_base | vit_large (needed for random)")
    p.add_argument("--in-chans", type=int, help="1 or 3 (default: the weights'; random: 1)")
    p.add_argument("--train-dataset", help="shards spec, e.g. data/fpdb_brain:train")
    p.add_argument("--val-dataset", help="shards spec, e.g. data/fpdb_brain:val")
    p.add_argument("--test-datasets", nargs="+", help="one or more shards specs; the first is the headline")
    p.add_argument("--output-dir", required=True, help="where results.json, summary.md and figures go")
    p.add_argument("--cache-dir", help="keep the extracted features here (reused when nothing changed)")
    p.add_argument("--image-size", type=int, help="network input side (default 224)")
    p.add_argument("--batch-size", type=int, help="feature-extraction batch per process (default 64)")
    p.add_argument("--num-workers", type=int, help="data-loading workers per process (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides section.key=value (e.g. linear.epochs=20)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse with options and `section.key=value` overrides in any order.

    `--test-datasets` takes one or more values, so overrides written after it would be read as test
    sets: values of the form `section.key=value` are moved to the overrides.
    """
    args = parser.parse_intermixed_args(argv)
    if args.test_datasets:
        test_datasets, moved = split_overrides(args.test_datasets)
        args.test_datasets = test_datasets or None
        args.overrides = [*moved, *args.overrides]
    return args


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

    @property
    def progress(self) -> bool:
        """Progress bars on (rank 0 only draws them)."""
        return self.cfg.features.progress

    def load(self, *, need_val: bool = True, with_mask: bool = False, labelled: bool = True, **model_kwargs) -> None:
        """Load the backbone (on the run's device) and the splits; assign the targets."""
        start = time.perf_counter()
        m, d = self.cfg.model, self.cfg.data
        if self.like is not None:
            self.backbone = random_like(self.like, m.seed, m.attention_backend, **model_kwargs)
        else:
            self.backbone = load_eval_backbone(m.pretrained_weights, m.arch, m.in_chans, d.image_size, seed=m.seed,
                                               attention_backend=m.attention_backend, **model_kwargs)
        model = self.backbone.model
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
        self.timing["load_s"] = time.perf_counter() - start

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
        }


def _finish(ctx: EvalContext, results: dict, start: float) -> None:
    """Timing and config into `results`; write the run's report, config.yaml beside it (rank 0)."""
    ctx.timing["total_s"] = time.perf_counter() - start
    results["timing"] = {k: round(v, 3) for k, v in ctx.timing.items()}
    results["config"] = ctx.cfg.to_dict()
    write_eval_config(ctx.cfg, ctx.out_dir / "config.yaml")
    write_report(results, ctx.out_dir)


def cli_main(task: str, runner: Callable[[EvalContext], dict | None], argv=None, description: str = "") -> int:
    """Parse, run `runner` under a process group, write the report on rank 0; exit code 0, or 2 on a user error."""
    args = parse_args(build_parser(description or f"{task} evaluation"), argv)
    out = Path(args.output_dir)
    try:
        flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items()}
        if args.no_progress:
            flags["features.progress"] = False
        cfg = load_eval_config(args.config_file, flags, args.overrides)
        info = init_distributed(cfg.runtime.device, cfg.runtime.dist_backend)
        setup_logging(out, info.rank)
        start = time.perf_counter()
        ctx = EvalContext(task, cfg, out, info)
        results = runner(ctx)
        if cfg.report.baseline == "random" and ctx.backbone.kind != "random":
            logger.info("baseline: a random initialisation of the same architecture on the same splits")
            base_ctx = EvalContext(task, cfg, out / "baseline_random", info, like=ctx.backbone)
            start_base = time.perf_counter()
            base_results = runner(base_ctx)
            if info.is_main:
                _finish(base_ctx, base_results, start_base)
                results["vs_random"] = versus_random(results, base_results, seed=cfg.report.seed)
                ctx.timing["baseline_s"] = time.perf_counter() - start_base
        if info.is_main and results is not None:
            _finish(ctx, results, start)
            print(f"{task}: wrote {out / 'results.json'}")
        return 0
    except DinoUSError as err:
        print(f"error (rank {os.environ.get('RANK', '0')}): {err}", file=sys.stderr)
        return 2
    finally:
        destroy_distributed()
