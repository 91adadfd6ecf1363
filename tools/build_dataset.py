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
import logging
import sys
from pathlib import Path

from dinov3_us.data.curation import SOURCES, BuildConfig, build_dataset, merge_datasets
from dinov3_us.errors import DinoUSError


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (None means 'use the source's default')."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", choices=sorted(SOURCES), help="dataset layout to read")
    p.add_argument("--merge", nargs="+", type=Path, metavar="DIR", help="curated folders to pool into --out")
    p.add_argument("--root", type=Path, help="folder of the public download")
    p.add_argument("--out", type=Path, required=True, help="output folder for shards and manifest.json")
    p.add_argument("--csv", type=Path, help="label CSV when not at its usual place under --root")
    p.add_argument("--task", help="fpdb: planes | brain-planes; fplr/phantom: planes; hc18: head-circumference")
    p.add_argument("--name", help="name used as sample-key prefix (default: the source); distinct per merged input")
    p.add_argument("--seed", type=int, default=42, help="seed of the split draw and of the phantom (default 42)")
    p.add_argument("--val-fraction", type=float, help="fraction of (train) patients -> val")
    p.add_argument("--test-fraction", type=float, help="fraction of patients -> test (sources without official test)")
    p.add_argument("--num-samples", type=int, help="phantom: number of images (default 96)")
    p.add_argument("--image-size", type=int, help="phantom: image side in pixels (default 96)")
    p.add_argument("--folder-labels", default="auto", choices=["auto", "subfolder", "none"], help="folder: labels")
    p.add_argument("--group-regex", help="folder: regex giving the patient id from the relative path")
    flag = argparse.BooleanOptionalAction
    p.add_argument("--grayscale", action=flag, help="store 8-bit grayscale (default on)")
    p.add_argument("--resize", type=int, help="shorter side in pixels, only ever shrinks; 0 keeps (default 256)")
    p.add_argument("--crop-sector", action=flag, help="crop to the scan sector (default on for real scans)")
    p.add_argument("--mask-text", action=flag, help="inpaint burned-in text/calipers (default on for real scans)")
    p.add_argument("--dedup", action=flag, help="drop near-duplicates by pHash (default on for real scans)")
    p.add_argument("--dedup-threshold", type=int, default=4, help="max pHash Hamming distance of a duplicate")
    p.add_argument("--dedup-against", nargs="+", type=Path, default=[], metavar="DIR", help="earlier builds")
    p.add_argument("--png-compression", type=int, default=3, help="zlib level of the stored PNGs, 0-9 (default 3)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--limit", type=int, help="at most N samples per split (quick tests)")
    p.add_argument("--strict", action="store_true", help="any bad input is an error naming the file")
    p.add_argument("--workers", type=int, default=1, help="decoding processes (output is the same for any value)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset built in --out with other arguments")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log every skipped file")
    args = p.parse_args(argv)
    if (args.source is None) == (args.merge is None):
        p.error("give exactly one of --source or --merge")
    return args


def main(argv=None) -> int:
    """Run the command; user errors become one line on stderr and exit code 2."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("dinov3_us").setLevel(logging.DEBUG if args.verbose else logging.INFO)
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
