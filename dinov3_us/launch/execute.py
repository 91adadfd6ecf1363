"""Running a planned chain: dry-run, SLURM submission (with dependencies), or the same chain locally.

SLURM: every job is submitted at once, dependents with `--dependency=afterok:<parent>` and
`--kill-on-invalid-dep=yes`; the launcher prints ids, logs, the output layout and how to watch, and
follows the jobs with `--wait`. Local / debug: the jobs run one after the other in the foreground
(`dinov3_us.launch.local_controller`: one process per task, a failed task ends its siblings, nothing outlives
the launcher; DebugExecutor: in this process); a failure cancels the rest. Both write `OUT/jobs.json`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dinov3_us.launch.cluster import ClusterOptions, make_executor, sbatch_script, slurm_parameters
from dinov3_us.launch.jobs import (
    JOBS_FILE,
    JobsFile,
    now,
    pretrain_progress,
    print_report,
    report_failures,
    scancel,
    summary_table,
    watch,
)
from dinov3_us.launch.local_controller import LocalJob, job_failure, stop_job
from dinov3_us.launch.plan import JobSpec
from dinov3_us.launch.stages import write_report
from dinov3_us.log import setup_logging
from dinov3_us.run_dir import RunDir

logger = logging.getLogger("dinov3_us")


@dataclass
class Launch:
    """A checked chain of jobs and where it writes."""

    title: str
    cluster: str
    output_dir: Path
    jobs: list[JobSpec]
    options: ClusterOptions
    command_line: str
    notes: list[str] = field(default_factory=list)
    job_prefix: str = "dinov3_us."
    launch_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")

    @property
    def run(self) -> RunDir:
        """The launch's folder (a pretraining run, or an evaluation launch)."""
        return RunDir(self.output_dir)

    @property
    def folder(self) -> Path:
        """submitit's folder for this launch (pickles, sbatch scripts, logs)."""
        return self.output_dir / "submitit" / self.launch_id

    @property
    def jobs_file(self) -> JobsFile:
        """OUT/jobs.json."""
        return JobsFile(self.run.jobs)

    @property
    def report(self) -> Path:
        """The evaluation comparison table."""
        return self.run.report

    def dependency(self, spec: JobSpec, ids: dict[str, str]) -> str | None:
        """`afterok:<id>[:<id>]` of a job's parents."""
        if not spec.depends_on:
            return None
        return "afterok:" + ":".join(ids.get(d, f"<{d}>") for d in spec.depends_on)


def _record(launch: Launch, spec: JobSpec) -> dict:
    res = spec.resources
    state = "SUBMITTING" if launch.cluster == "slurm" else "PENDING"
    return {"kind": spec.kind, "job_id": None, "state": state, "depends_on": spec.depends_on,
            "nodes": res.nodes, "tasks_per_node": res.tasks_per_node, "gpus_per_node": res.gpus_per_node,
            "timeout_min": res.timeout_min, "command": spec.task.command(), "outputs": spec.outputs,
            **({"results": spec.results} if spec.results else {})}


def _start_jobs_file(launch: Launch) -> None:
    """Write OUT/jobs.json for this launch (an earlier one is kept in its submitit folder)."""
    jf = launch.jobs_file
    if jf.exists():
        try:
            old = jf.read()
            old_id = old.get("launch_id") or "earlier"
            archive = launch.output_dir / "submitit" / old_id / JOBS_FILE
            archive.parent.mkdir(parents=True, exist_ok=True)
            archive.write_text(json.dumps(old, indent=2) + "\n")
        except (OSError, ValueError) as err:
            logger.warning("could not keep the earlier %s: %s", jf.path, err)
    jf.write({
        "launch_id": launch.launch_id, "title": launch.title, "cluster": launch.cluster, "created": now(),
        "output_dir": str(launch.output_dir), "cwd": os.getcwd(), "launcher": launch.command_line,
        "submitit_folder": str(launch.folder), "report": str(launch.report),
        "jobs": {spec.name: _record(launch, spec) for spec in launch.jobs},
    })


def _set_submitted(launch: Launch, name: str, job, state: str) -> None:
    paths = job.paths

    def apply(data: dict) -> None:
        record = data["jobs"][name]
        record.update(job_id=str(job.job_id), stdout=str(paths.stdout), stderr=str(paths.stderr), submitted=now())
        if record.get("state") in ("SUBMITTING", "PENDING", None):  # the job may already have written RUNNING
            record["state"] = state

    launch.jobs_file.modify(apply)


def layout(launch: Launch) -> str:
    """Where everything goes."""
    out = launch.output_dir
    kinds = {s.kind for s in launch.jobs}
    lines = [f"Output layout ({out}):",
             f"  {out}/jobs.json                 job ids, states, commands, logs (kept current)",
             f"  {launch.folder}/  sbatch scripts, pickles, job logs <id>_<task>_log.out/.err"]
    if "pretrain" in kinds:
        lines += [f"  {out}/config.yaml               resolved pretraining config",
                  f"  {out}/log.txt, training_metrics.jsonl, tb/   pretraining log and metrics",
                  f"  {out}/ckpt/<iteration>/          checkpoints (a requeued job resumes from the latest)"]
    if kinds & {"pretrain", "convert"}:
        lines.append(f"  {out}/teacher.pth, teacher.json   the teacher backbone (official key format)")
    for spec in launch.jobs:
        if spec.kind == "eval":
            lines.append(f"  {spec.outputs[0]}/   results.json, summary.md, confusion_matrix.png")
    if "eval" in kinds:
        lines.append(f"  {launch.report}    the results table of all evaluations (the report)")
    return "\n".join(lines)


def dry_run(launch: Launch) -> int:
    """Print the sbatch scripts (SLURM) or the commands (local), submit nothing."""
    print(f"# {launch.title}: dry run, nothing submitted ({launch.cluster})")
    for note in launch.notes:
        print(f"# note: {note}")
    ids = {s.name: f"<{s.name}>" for s in launch.jobs}
    for spec in launch.jobs:
        res = spec.resources
        print(f"\n# ---- job {spec.name}: {res.nodes} node(s) x {res.tasks_per_node} task(s)"
              + (f", after {', '.join(spec.depends_on)} succeeded" if spec.depends_on else "") + " ----")
        print(f"# each task runs, in-process: {spec.task.command()}")
        if launch.cluster == "slurm":
            params = slurm_parameters(launch.job_prefix + spec.name, res, launch.options,
                                      launch.dependency(spec, ids))
            print(sbatch_script(launch.folder, params))
    print("\n" + layout(launch))
    return 0


def submit_slurm(launch: Launch, wait: bool, poll_s: float) -> int:
    """Submit every job (dependencies by id), write jobs.json, print how to follow; with `wait`, follow."""
    _start_jobs_file(launch)
    ids: dict[str, str] = {}
    for spec in launch.jobs:
        try:
            executor = make_executor("slurm", launch.folder, launch.job_prefix + spec.name, spec.resources,
                                     launch.options, launch.dependency(spec, ids))
            job = executor.submit(spec.task)
        except Exception as err:  # noqa: BLE001 - sbatch refused it (account, qos, limits...): undo the chain
            scancel(list(ids.values()))
            launch.jobs_file.modify(lambda data: [r.update(state="CANCELLED", note="submission of the chain failed")
                                                  for r in data["jobs"].values()])
            cancelled = f"; cancelled the jobs already submitted ({', '.join(ids.values())})" if ids else ""
            print(f"error: SLURM refused job {spec.name}: {str(err).strip()}{cancelled}", file=sys.stderr)
            return 2
        ids[spec.name] = str(job.job_id)
        _set_submitted(launch, spec.name, job, "PENDING")
    data = launch.jobs_file.read()
    print(f"{launch.title}: submitted {len(ids)} SLURM job(s)")
    for note in launch.notes:
        print(f"note: {note}")
    print(summary_table(data))
    print(layout(launch))
    rel = shlex.quote(str(launch.output_dir))
    print("Follow it:")
    print(f"  python launchers/status.py {rel} --wait   # states from sacct -> jobs.json, the report at the end")
    print(f"  squeue -j {','.join(ids.values())}")
    if "pretrain" in ids:
        print(f"  tail -f {rel}/log.txt   # pretraining progress")
    if not wait:
        return 0
    try:
        return watch(launch.jobs_file, poll_s)
    except KeyboardInterrupt:
        print(f"\nstopped watching; the jobs go on (python launchers/status.py {rel} --wait)", file=sys.stderr)
        return 130


def _follow_pretraining(job, jobs_file: JobsFile, poll_s: float = 10.0) -> None:
    """Print the pretraining's progress line (iteration, rate, ETA, alarm) while the local job runs."""
    last, next_print = None, time.monotonic() + poll_s
    while not job.done():
        time.sleep(0.5)  # notice the job's end at once; print progress every poll_s
        if time.monotonic() < next_print:
            continue
        next_print = time.monotonic() + poll_s
        line = pretrain_progress(jobs_file.read())
        if line and line != last:
            print(f"[{time.strftime('%H:%M:%S')}] pretrain: {line}", flush=True)
            last = line


def _job_error(job, err: Exception) -> str:
    """One line for a failed job: its stage's error, and (local jobs) which task failed and how."""
    text = str(err).strip()
    error = text.splitlines()[-1] if text else repr(err)
    reason = job_failure(job) if isinstance(job, LocalJob) else None
    if reason and "has not produced any output" in text:  # the task died without a word (a signal, the OOM killer)
        return reason
    return f"{error} ({reason})" if reason else error


def run_local(launch: Launch) -> int:
    """Run the chain here, job after job (local: subprocesses; debug: this process).

    Nothing outlives the launcher: a job still running when it stops (an error, Ctrl-C) is ended whole
    (`stop_job`), and a killed launcher ends its jobs through their controllers (`dinov3_us.launch.local_controller`).
    """
    _start_jobs_file(launch)
    for note in launch.notes:
        print(f"note: {note}")
    print(f"{launch.title}: running {len(launch.jobs)} job(s) here ({launch.cluster}); logs in {launch.folder}")
    states: dict[str, str] = {}
    jf = launch.jobs_file
    for spec in launch.jobs:
        failed = [d for d in spec.depends_on if states.get(d) != "COMPLETED"]
        if failed:
            states[spec.name] = "CANCELLED"
            jf.update_job(spec.name, state="CANCELLED", note=f"cancelled: {failed[0]} {states.get(failed[0])}")
            continue
        executor = make_executor(launch.cluster, launch.folder, launch.job_prefix + spec.name, spec.resources,
                                 launch.options)
        start = time.monotonic()
        job = executor.submit(spec.task)
        try:
            _set_submitted(launch, spec.name, job, "RUNNING")
            print(f"[{time.strftime('%H:%M:%S')}] {spec.name}: {spec.resources.tasks_per_node} process(es), "
                  f"log {job.paths.stdout}", flush=True)
            try:
                if launch.cluster == "local" and spec.kind == "pretrain":
                    _follow_pretraining(job, jf)
                job.results()
                state, error = "COMPLETED", None
            except KeyboardInterrupt:
                print(f"\n{spec.name} interrupted: stopping it (its processes checkpoint and exit)", file=sys.stderr,
                      flush=True)
                if isinstance(job, LocalJob):
                    stop_job(job)
                jf.update_job(spec.name, state="CANCELLED", note="interrupted (Ctrl-C)", ended=now())
                print(f"{spec.name} stopped; launch again with --resume to continue", file=sys.stderr)
                return 130
            except Exception as err:  # noqa: BLE001 - the job's own failure, reported below
                state, error = "FAILED", _job_error(job, err)
        finally:
            if isinstance(job, LocalJob) and not job.done():
                stop_job(job)  # the launcher is leaving by an error of its own: take the job with it
        states[spec.name] = state
        fields = {"state": state, "ended": now(), "elapsed_s": round(time.monotonic() - start, 1)}
        if error:
            fields["error"] = error
        jf.update_job(spec.name, **fields)
        print(f"[{time.strftime('%H:%M:%S')}] {spec.name}: {state} ({fields['elapsed_s']} s)", flush=True)
    data = jf.read()
    print(summary_table(data))
    if report_failures(data):
        return 1
    if any(s.kind == "eval" for s in launch.jobs) and not launch.report.is_file():
        write_report(jf, launch.report.parent)
    print_report(data)
    return 0


def execute(launch: Launch, dry: bool, wait: bool, poll_s: float) -> int:
    """Dry-run, submit or run the launch; the process exit code."""
    if dry:
        return dry_run(launch)
    if launch.cluster == "slurm":
        return submit_slurm(launch, wait, poll_s)
    return run_local(launch)


def plan_and_execute(plan, args) -> int:
    """The launchers' `main`: check and plan (`plan(args)`), then dry-run / submit / run; the exit code.

    A user error found while planning is printed and nothing is submitted (exit code 2).
    """
    from dinov3_us.errors import DinoUSError

    setup_logging()
    try:
        launch = plan(args)
    except DinoUSError as err:
        print(f"error: {err}\nnothing was submitted", file=sys.stderr)
        return 2
    return execute(launch, args.dry_run, args.wait, args.poll)
