"""Curate a public fetal-ultrasound dataset into webdataset shards, or merge curated folders into a pool.

    python tools/build_dataset.py --source fpdb --task brain-planes --root ../shared/data/fpdb --out data/fpdb_brain
    python tools/build_dataset.py --source hc18 --root ../shared/data/hc18 --out data/hc18
    python tools/build_dataset.py --source phantom --out data/phantom            # synthetic demo data
    python tools/build_dataset.py --merge data/hc18 data/fpdb --out data/pool

Re-running with the same arguments resumes an interrupted build and gives byte-identical shards.
Errors in the input (missing CSV column, wrong --task, ...) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from dinov3_us.data.curation import SOURCES, BuildConfig, build_dataset, merge_datasets
from dinov3_us.data.curation.preprocess import PrepOptions
from dinov3_us.data.curation.sources import folder, phantom
from dinov3_us.errors import DinoUSError
from dinov3_us.log import setup_logging


class _HelpFormatter(argparse.HelpFormatter):
    """Argparse's formatter, but never breaking a line inside a hyphenated name (`brain-planes`, `--val-fraction`)."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _word(value) -> str:
    """A default as the help shows it: on / off / none, else the value."""
    if value is True or value is False or value is None:
        return {True: "on", False: "off", None: "none"}[value]
    return str(value)


def _per_source(values: dict[str, object]) -> str:
    """`'256'` when every source agrees, else `'on for fpdb, hc18; off for phantom'` (sources grouped by value)."""
    groups: dict[str, list[str]] = {}
    for source, value in values.items():
        groups.setdefault(_word(value), []).append(source)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{value} for {', '.join(names)}" for value, names in groups.items())


def _tasks_help() -> str:
    """Every task of every source, the default marked: derived from the source modules."""
    parts = []
    for name, module in SOURCES.items():
        tasks = [f"{t} (default)" if t == module.DEFAULT_TASK else t for t in module.TASKS]
        parts.append(f"{name}: {' | '.join(tasks) if tasks else 'none'}")
    return "task of the source: " + "; ".join(parts)


def _fraction_help(split: str, what: str) -> str:
    """Help of --val-fraction / --test-fraction with each source's default (sources without one reject it)."""
    given = {name: m.SPLIT_FRACTIONS[split] for name, m in SOURCES.items() if split in m.SPLIT_FRACTIONS}
    text = f"{what} (default: {_per_source(given)})"
    refused = [name for name in SOURCES if name not in given]
    return text + (f"; not accepted by {', '.join(refused)}" if refused else "")


def _prep_help(key: str, what: str) -> str:
    """Help of a preprocessing flag with each source's default (`PREP_DEFAULTS`, else `PrepOptions`)."""
    values = {name: m.PREP_DEFAULTS.get(key, getattr(PrepOptions, key, None)) for name, m in SOURCES.items()}
    return f"{what} (default: {_per_source(values)})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every source-dependent default in the help is read from the source modules."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=_HelpFormatter)
    p.add_argument("--source", choices=sorted(SOURCES), help="dataset layout to read")
    p.add_argument("--merge", nargs="+", type=Path, metavar="DIR", help="curated folders to pool into --out")
    p.add_argument("--root", type=Path, help="folder of the public download (required except for phantom)")
    p.add_argument("--out", type=Path, required=True, help="output folder for shards and manifest.json")
    p.add_argument("--csv", type=Path, help="label CSV (default: the source's usual file under --root)")
    p.add_argument("--task", help=_tasks_help())
    p.add_argument("--name", help="name used as sample-key prefix (default: the source); distinct per merged input")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the split draw and of the phantom (default %(default)s)")
    p.add_argument("--val-fraction", type=float, help=_fraction_help("val", "fraction of (train) patients -> val"))
    p.add_argument("--test-fraction", type=float, help=_fraction_help("test", "fraction of patients -> test"))
    p.add_argument("--num-samples", type=int,
                   help=f"phantom: number of images (default {phantom.DEFAULT_NUM_SAMPLES})")
    p.add_argument("--image-size", type=int,
                   help=f"phantom: image side in pixels (default {phantom.DEFAULT_IMAGE_SIZE})")
    p.add_argument("--folder-labels", default="auto", choices=folder.LABEL_MODES,
                   help="folder: where labels come from (default %(default)s)")
    p.add_argument("--group-regex", help="folder: regex giving the patient id from the relative path "
                   "(default: none, every image its own patient)")
    flag = argparse.BooleanOptionalAction
    p.add_argument("--grayscale", action=flag, help=_prep_help("grayscale", "store 8-bit grayscale"))
    p.add_argument("--resize", type=int,
                   help=_prep_help("resize", "shorter side in pixels, only ever shrinks; 0 keeps"))
    p.add_argument("--crop-sector", action=flag, help=_prep_help("crop_sector", "crop to the scan sector"))
    p.add_argument("--mask-text", action=flag, help=_prep_help("mask_text", "inpaint burned-in text/calipers"))
    p.add_argument("--dedup", action=flag, help=_prep_help("dedup", "drop near-duplicates by pHash") +
                   "; with --merge: on")
    p.add_argument("--dedup-threshold", type=int, default=4,
                   help="max pHash Hamming distance of a duplicate (default %(default)s)")
    p.add_argument("--dedup-against", nargs="+", type=Path, default=[], metavar="DIR",
                   help="earlier builds to drop near-duplicates of (default: none)")
    p.add_argument("--png-compression", type=int, default=3,
                   help="zlib level of the stored PNGs, 0-9 (default %(default)s)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default %(default)s)")
    p.add_argument("--limit", type=int, help="at most N samples per split, for quick tests (default: no limit)")
    p.add_argument("--strict", action="store_true", help="any bad input is an error naming the file")
    p.add_argument("--workers", type=int, default=1,
                   help="decoding processes; the output is the same for any value (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset built in --out with other arguments")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log every skipped file")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (None means 'use the source's default')."""
    p = build_parser()
    args = p.parse_args(argv)
    if (args.source is None) == (args.merge is None):
        p.error("give exactly one of --source or --merge")
    return args


def main(argv=None) -> int:
    """Run the command; user errors become one line on stderr and exit code 2."""
    args = parse_args(argv)
    setup_logging(verbose=args.verbose)
    try:
        if args.merge:
            manifest = merge_datasets(args.merge, args.out, shard_size=args.shard_size, dedup=args.dedup is not False,
                                      threshold=args.dedup_threshold, strict=args.strict, overwrite=args.overwrite,
                                      progress=not args.no_progress)
        else:
            skip = {"merge", "no_progress", "verbose"}
            options = {k: v for k, v in vars(args).items() if k not in skip}
            manifest = build_dataset(BuildConfig(**options, progress=not args.no_progress))
    except DinoUSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {split: sum(t.values()) for split, t in manifest["counts"].items()}
    print(f"{args.out}: {manifest['num_samples']} samples {counts}; skipped {manifest['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
