"""`OUT/jobs.json`: the ids, states and commands of a launch, kept current by the jobs and by the watcher.

The launcher writes the file when it submits; each job updates its own entry when it starts, is
requeued, finishes or fails (a failing job also cancels and marks its dependents); `refresh()` (used
by `--wait` and `launchers/status.py`) reads the states SLURM's accounting (`sacct`) reports, which
are the truth for jobs that could not write themselves (cancelled, killed, timed out). Writers take
an exclusive `flock` on `OUT/.jobs.json.lock` and replace the file atomically.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dinov3_us.fileio import write_json_atomic
from dinov3_us.launch.cluster import run_command
from dinov3_us.train.metric_logger import progress_line

logger = logging.getLogger("dinov3_us")

JOBS_FILE = "jobs.json"
# SLURM states after which a job will not run again (a requeued job goes back to PENDING).
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                   "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
FAILED_STATES = TERMINAL_STATES - {"COMPLETED"}


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class JobsFile:
    """Read / update `OUT/jobs.json` under a file lock (safe across the jobs of one launch and the watcher)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = self.path.with_name("." + self.path.name + ".lock")

    def exists(self) -> bool:
        """Whether the file exists."""
        return self.path.is_file()

    def read(self) -> dict[str, Any]:
        """The parsed file (an empty launch when absent)."""
        if not self.path.is_file():
            return {"jobs": {}}
        return json.loads(self.path.read_text(encoding="utf-8"))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the launch's exclusive lock (not re-entrant: do not call `modify` inside)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, data: dict[str, Any]) -> None:
        data["updated"] = now()
        write_json_atomic(self.path, data)

    def write(self, data: dict[str, Any]) -> None:
        """Replace the whole file."""
        with self.locked():
            self._write(data)

    def modify(self, fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply `fn` to the parsed file and write it back, atomically with respect to other writers."""
        with self.locked():
            data = self.read()
            fn(data)
            self._write(data)
            return data

    def update_job(self, name: str, job_id: str | None = None, **fields: Any) -> bool:
        """Set `fields` on job `name`; when `job_id` is given, only if the entry is that job (else False)."""
        done = []

        def apply(data: dict[str, Any]) -> None:
            record = data.get("jobs", {}).get(name)
            if record is None or (job_id is not None and record.get("job_id") not in (None, str(job_id))):
                return
            record.update(fields)
            done.append(True)

        if not self.path.is_file():
            return False
        self.modify(apply)
        return bool(done)


def parse_sacct(text: str) -> dict[str, dict[str, str]]:
    """`sacct -X -n -P -o JobID,State,ExitCode,NodeList` lines -> {job_id: {state, exit_code, nodes}}."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        state = parts[1].split()[0] if parts[1].split() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        out[parts[0]] = {"state": state, "exit_code": parts[2], "nodes": parts[3] if len(parts) > 3 else ""}
    return out


def slurm_states(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Current states of SLURM jobs: sacct where accounting works, else squeue (queued/running only)."""
    if not job_ids:
        return {}
    ids = ",".join(job_ids)
    proc = run_command(["sacct", "-X", "-n", "-P", "-j", ids, "-o", "JobID,State,ExitCode,NodeList"])
    states = parse_sacct(proc.stdout) if proc is not None and proc.returncode == 0 else {}
    missing = [j for j in job_ids if j not in states]
    if missing:  # not yet in the accounting database, or no accounting: ask the queue
        proc = run_command(["squeue", "-h", "-j", ",".join(missing), "-o", "%i|%T|0:0|%N"])
        if proc is not None and proc.returncode == 0:
            states.update(parse_sacct(proc.stdout))
    return states


def scancel(job_ids: list[str]) -> None:
    """Cancel SLURM jobs (errors ignored: they may have ended already)."""
    if job_ids:
        run_command(["scancel", *job_ids])


def refresh(jobs_file: JobsFile) -> dict[str, Any]:
    """Copy the states SLURM reports (sacct, squeue for jobs not yet in accounting) into a SLURM launch's jobs.json.

    SLURM is the only source of a SLURM job's state; SLURM also cancels the dependents of a failed
    job itself (`--kill-on-invalid-dep=yes`).
    """
    data = jobs_file.read()
    if data.get("cluster") != "slurm":
        return data
    ids = [r["job_id"] for r in data["jobs"].values() if r.get("job_id")]
    states = slurm_states(ids)

    def apply(data: dict[str, Any]) -> None:
        jobs = data["jobs"]
        for record in jobs.values():
            info = states.get(str(record.get("job_id")))
            if info:
                record["state"] = info["state"]
                record["exit_code"] = info["exit_code"]
                if info["nodes"] and info["nodes"] not in ("None", "(null)", "None assigned"):
                    record["nodelist"] = info["nodes"]

    return jobs_file.modify(apply)


def all_done(data: dict[str, Any]) -> bool:
    """Whether every job of the launch is in a terminal state."""
    return all(r.get("state") in TERMINAL_STATES for r in data["jobs"].values())


def _tail(path: str | None, lines: int = 8) -> str:
    if not path or not Path(path).is_file():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def summary_table(data: dict[str, Any]) -> str:
    """A plain-text table of the jobs: name, id, state, dependency, log."""
    rows = [("job", "id", "state", "after", "log")]
    for name, r in data["jobs"].items():
        after = ",".join(r.get("depends_on", [])) or "-"
        rows.append((name, str(r.get("job_id") or "-"), r.get("state", "?"), after, r.get("stdout") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    table = "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)
    progress = pretrain_progress(data)
    return table + (f"\n  pretraining: {progress}" if progress else "")


def pretrain_progress(data: dict[str, Any]) -> str | None:
    """The pretraining run's progress line (iteration, rate, ETA, self-distillation alarm), if it has logged."""
    if "pretrain" not in data.get("jobs", {}) or not data.get("output_dir"):
        return None
    return progress_line(data["output_dir"])


def report_failures(data: dict[str, Any], stream=sys.stdout) -> bool:
    """Print what failed (with the end of its error log) and what was cancelled; True when something did."""
    jobs = data["jobs"]
    failed = [n for n, r in jobs.items() if r.get("state") in FAILED_STATES and r.get("state") != "CANCELLED"]
    cancelled = [n for n, r in jobs.items() if r.get("state") == "CANCELLED"]
    for name in failed:
        r = jobs[name]
        print(f"FAILED: {name} (job {r.get('job_id')}) ended {r['state']}"
              + (f": {r['error']}" if r.get("error") else ""), file=stream)
        tail = _tail(r.get("stderr"))
        if tail:
            print(f"  last lines of {r['stderr']}:\n{tail}", file=stream)
    if cancelled:
        print("CANCELLED: " + ", ".join(f"{n} (job {jobs[n].get('job_id') or '-'}"
                                         + (f"; {jobs[n]['note']}" if jobs[n].get("note") else "") + ")"
                                         for n in cancelled), file=stream)
    if failed or cancelled:
        print(f"Fix the cause and launch the same command again with --resume: pretraining continues from the "
              f"latest checkpoint in {data.get('output_dir', 'OUT')}/ckpt.", file=stream)
    return bool(failed or cancelled)


def print_report(data: dict[str, Any], stream=sys.stdout) -> None:
    """Print the evaluation table (`OUT/eval/comparison.md`), where the reports are and the run report's summary."""
    report = data.get("report")
    if report and Path(report).is_file():
        print("\n" + Path(report).read_text(encoding="utf-8").rstrip(), file=stream)
        print(f"\nReport: {report} (+ {Path(report).with_suffix('.png').name}); per evaluation: "
              f"{Path(report).parent}/<name>/summary.md, results.json, confusion_matrix.png", file=stream)
    run_report = Path(data.get("output_dir", "")) / "report.html"
    if data.get("output_dir") and run_report.is_file():
        print(f"Run report (training curves, downstream monitor, evaluations): {run_report} "
              f"(and {run_report.with_suffix('.md').name})", file=stream)
        md = run_report.with_suffix(".md")
        head = md.read_text(encoding="utf-8").split("\n## ")[0] if md.is_file() else ""
        print("\n".join(line for line in head.splitlines() if line.startswith("- **")), file=stream)  # its summary


def watch(jobs_file: JobsFile, poll_s: float = 10.0, stream=sys.stdout, timeout_s: float | None = None) -> int:
    """Follow a SLURM launch until every job has ended; prints state changes. 0 if all COMPLETED, else 1."""
    seen: dict[str, str] = {}
    start = time.monotonic()
    while True:
        data = refresh(jobs_file)
        for name, r in data["jobs"].items():
            state = r.get("state", "?")
            if seen.get(name) != state:
                extra = f" on {r['nodelist']}" if state == "RUNNING" and r.get("nodelist") else ""
                print(f"[{time.strftime('%H:%M:%S')}] {name} (job {r.get('job_id')}): {state}{extra}", file=stream,
                      flush=True)
                seen[name] = state
        running = data["jobs"].get("pretrain", {}).get("state") == "RUNNING"
        progress = pretrain_progress(data) if running else None
        if progress and progress != seen.get("_progress"):
            print(f"[{time.strftime('%H:%M:%S')}] pretrain: {progress}", file=stream, flush=True)
            seen["_progress"] = progress
        if all_done(data):
            break
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            print(f"still running after {timeout_s:.0f} s; stopped watching (the jobs go on)", file=stream)
            return 1
        time.sleep(poll_s)
    print(summary_table(data), file=stream)
    if report_failures(data, stream):
        return 1
    print_report(data, stream)
    return 0
