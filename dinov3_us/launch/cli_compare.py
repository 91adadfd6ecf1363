"""Compare evaluation runs: a markdown table (headline metrics with 95% CIs, per-class F1) and a bar chart.

    python tools/compare_results.py runs/random/results.json runs/official/results.json runs/ours/results.json \
        [--output-dir OUT]

Prints the table and writes OUT/comparison.md and OUT/comparison.png (OUT defaults to the current
folder). Where every run folder holds a predictions.csv, and the runs are not different evaluations
of one backbone, a second table compares each run with the first on the same test samples (paired
bootstrap over patients: the difference, its 95% CI and the share of replicates where the run does
not beat the first). Runs evaluated with `report.baseline=random` add a table against their
random initialisation and the chance level. Arguments may also be run folders holding a
results.json. Exit code 2 on an unreadable file.
"""

import argparse
import sys
from pathlib import Path

from dinov3_us.errors import DinoUSError
from dinov3_us.eval.compare import write_comparison


def main(argv=None) -> int:
    """Read the runs, print and write the comparison; 0, or 2 on a user error."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results.json files (or run folders)")
    p.add_argument("--output-dir", default=".", help="where comparison.md and comparison.png go (default: .)")
    args = p.parse_args(argv)
    try:
        table, notes = write_comparison(args.results, args.output_dir)
    except DinoUSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(note, file=sys.stderr)
    out = Path(args.output_dir)
    print(table, end="")
    print(f"wrote {out / 'comparison.md'} and {out / 'comparison.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
