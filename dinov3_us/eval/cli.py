"""The command line every `tools/eval_*.py` shares: flags and `section.key=value` overrides -> `EvalConfig` -> run.

`main(task, argv)` is the body of each tool: it resolves the config (defaults <- `--config-file` <-
flags <- overrides), runs `dinov3_us.eval.protocols.evaluate` under the process group (torchrun,
srun or a plain process) and prints where the results are. User errors (`DinoUSError`) become one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dinov3_us.configs.config import flatten, parse_dotlist, read_yaml, split_overrides
from dinov3_us.errors import DinoUSError
from dinov3_us.eval.config import load_eval_config
from dinov3_us.eval.protocols import evaluate
from dinov3_us.models import ARCHS

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


# an override of each task's own section, for its --help
OVERRIDE_EXAMPLES = {
    "linear": "linear.epochs=20 linear.label_fractions=[0.1,1.0]",
    "knn": "knn.ks=[10,20] knn.temperature=0.07",
    "finetune": "finetune.epochs=30 finetune.lr=5e-5",
    "segmentation": "segmentation.epochs=20 segmentation.learning_rates=[0.1,1.0]",
}


def build_parser(description: str, task: str = "linear") -> argparse.ArgumentParser:
    """The flags every evaluation command takes (`task` picks the override example of its help)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", help="evaluation YAML (e.g. configs/eval/fpdb_brain_planes.yaml)")
    p.add_argument("--pretrained-weights", help="'random', an official DINOv3 .pth, an exported teacher .pth, or a "
                                                "run folder (its converted teacher.pth)")
    p.add_argument("--arch", help=f"{' | '.join(ARCHS)} (needed for random)")
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
    example = OVERRIDE_EXAMPLES.get(task, "report.bootstrap=1000")
    p.add_argument("overrides", nargs="*", help=f"config overrides section.key=value (e.g. {example})")
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



def explicit_keys(config_file: str | None, flags: dict, overrides: list[str]) -> frozenset[str]:
    """The `section.key`s the user set: in the YAML, by a flag or by an override (the others are defaults)."""
    keys = set(flatten({s: b for s, b in read_yaml(config_file).items() if b})) if config_file else set()
    keys |= {key for key, value in flags.items() if value is not None}
    return frozenset(keys | set(parse_dotlist(overrides)))


def main(task: str, argv: list[str] | None = None, description: str = "") -> int:
    """Parse, evaluate, and return the exit code: 0, or 2 on a user error."""
    args = parse_args(build_parser(description or f"{task} evaluation", task), argv)
    try:
        flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items()}
        if args.no_progress:
            flags["features.progress"] = False
        cfg = load_eval_config(args.config_file, flags, args.overrides)
        results = evaluate(task, cfg, args.output_dir, explicit_keys(args.config_file, flags, args.overrides))
    except DinoUSError as err:
        print(f"error (rank {os.environ.get('RANK', '0')}): {err}", file=sys.stderr)
        return 2
    if results is not None:
        print(f"{task}: wrote {Path(args.output_dir) / 'results.json'}")
    return 0
