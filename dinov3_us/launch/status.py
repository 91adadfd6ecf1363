"""Where a launch stands: refresh `OUT/jobs.json` from SLURM's accounting and print it; `--wait` follows it to the end.

    python launchers/status.py runs/vitb16            # one look: the jobs table (and the report when done)
    python launchers/status.py runs/vitb16 --wait     # follow until every job ended; exit 0 if all COMPLETED

Under the table, the pretraining's progress from its training_metrics.jsonl: iteration, rate, ETA, the
DINO loss in units of ln K, the downstream monitor's last scores beside random init, and a WARNING while
the self-distillation alarm is on.

    python launchers/status.py runs/vitb16 --report   # the run report (curves, monitor, evaluations), any time
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

from dinov3_us.eval.run_report import write_run_report
from dinov3_us.launch.argtypes import nonnegative_float
from dinov3_us.launch.jobs import (
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


def write_report(output_dir: str) -> int:
    """`--report`: the run report of `output_dir` (a pretraining run folder, or the launch folder above one)."""
    folder = Path(output_dir)
    if not (folder / "training_metrics.jsonl").is_file():
        jobs_file, _ = find_jobs_file(output_dir)
        data = jobs_file.read() if jobs_file is not None else {}
        folder = Path(data.get("output_dir") or folder)
    if not (folder / "training_metrics.jsonl").is_file() and not (folder / "config.yaml").is_file():
        print(f"error: {output_dir} is not a pretraining run folder (no training_metrics.jsonl or config.yaml)",
              file=sys.stderr)
        return 2
    md, page = write_run_report(folder)
    print(f"Run report: {page} (and {md})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Print (or follow) the state of a launch; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", help="the --output-dir of submit_pretrain.py / submit_eval.py")
    p.add_argument("--wait", action="store_true", help="follow until every job has ended")
    p.add_argument("--poll", type=nonnegative_float, default=10.0, metavar="S",
                   help="seconds between checks (default 10)")
    p.add_argument("--report", action="store_true",
                   help="write the run report (OUT/report.md, report.html: training curves, downstream monitor, "
                        "evaluations) from the run folder's files, also while the run goes on, and print where")
    args = p.parse_args(argv)
    if args.report:
        return write_report(args.output_dir)
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
