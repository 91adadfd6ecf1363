"""Where a launch stands: refresh `OUT/jobs.json` from SLURM's accounting and print it; `--wait` follows it to the end.

    python launchers/status.py runs/vitb16            # one look: the jobs table (and the report when done)
    python launchers/status.py runs/vitb16 --wait     # follow until every job ended; exit 0 if all COMPLETED

Under the table, the pretraining's progress from its training_metrics.jsonl: iteration, rate, ETA, the
DINO loss in units of ln K, and a WARNING while the self-distillation alarm is on.
A job whose parent failed is reported as cancelled (and cancelled, should SLURM not have done it).
A folder without jobs.json whose one child holds one (`runs/demo` for `runs/demo/pretrain`) stands for
that child; with several such children, they are listed.
Exit codes: 0 all completed (or still running without --wait), 1 a job failed or was cancelled,
2 no jobs.json in that folder (nor in exactly one of its children).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launchers.jobs import (  # noqa: E402
    JOBS_FILE,
    JobsFile,
    all_done,
    print_report,
    refresh,
    report_failures,
    summary_table,
    watch,
)


def find_jobs_file(output_dir: str) -> tuple[JobsFile | None, str | None]:
    """(jobs file, None) of `output_dir` or of its only child that has one; else (None, the error line)."""
    folder = Path(output_dir)
    jobs_file = JobsFile(folder / JOBS_FILE)
    if jobs_file.exists():
        return jobs_file, None
    children = sorted(c for c in folder.iterdir() if (c / JOBS_FILE).is_file()) if folder.is_dir() else []
    if len(children) == 1:
        print(f"no {JOBS_FILE} in {output_dir}: following the launch in {children[0]}", file=sys.stderr)
        return JobsFile(children[0] / JOBS_FILE), None
    if children:
        return None, (f"no {JOBS_FILE} in {output_dir}, but {len(children)} launches one level down: "
                      f"{', '.join(str(c) for c in children)} (give one of them)")
    return None, f"no {JOBS_FILE} in {output_dir} (nothing was launched there)"


def main(argv: list[str] | None = None) -> int:
    """Print (or follow) the state of a launch; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", help="the --output-dir of submit_pretrain.py / submit_eval.py")
    p.add_argument("--wait", action="store_true", help="follow until every job has ended")
    p.add_argument("--poll", type=float, default=10.0, metavar="S", help="seconds between checks (default 10)")
    args = p.parse_args(argv)
    jobs_file, error = find_jobs_file(args.output_dir)
    if jobs_file is None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.wait:
        try:
            return watch(jobs_file, args.poll)
        except KeyboardInterrupt:
            print("\nstopped watching; the jobs go on", file=sys.stderr)
            return 130
    data = refresh(jobs_file)
    print(summary_table(data))
    if not all_done(data):
        return 0
    if report_failures(data):
        return 1
    print_report(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
