"""The callables submitit runs inside the jobs: each runs one `tools/*.py` command line in-process.

Every task process (one per GPU, or per CPU process) gets torch.distributed's variables from
submitit's `TorchDistributedEnvironment` (SLURM or local), the job's working directory, and as many
torch threads as the job has CPUs per task. A task records itself in `OUT/jobs.json` (RUNNING,
REQUEUED, COMPLETED, FAILED); a failing task cancels the jobs that depend on it.

Requeue: while `Trainer.run()` trains, its `PreemptionFlag` owns SIGUSR1/SIGUSR2/SIGTERM (submitit's
USR2 handler is replaced). The trainer checkpoints after the current step and returns 75; the
handlers it replaced are back in place by then. `PretrainTask` watches which signals arrived (a
wakeup fd, which does not depend on the handlers) and, on rank 0, hands a USR1/USR2 over to
submitit's own handler, exactly as if it had received the signal: `checkpoint()` (this object) is
pickled again, the time-limit countdown (`--max-num-timeout`) is applied, `scontrol requeue` runs
and the process exits. The requeued job runs this task again and the trainer resumes from the
checkpoint it has just written. A SIGTERM alone means SLURM is cancelling the job (or preempting
it, and then requeues it itself): the checkpoint is kept and nothing is requeued. Outside
training (model building, export), a USR2 reaches submitit's handler directly, with the same result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import runpy
import shlex
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import submitit

from dinov3_us.errors import DinoUSError
from dinov3_us.train.signals import REQUEUE_EXIT_CODE
from launchers.common import TOOLS
from launchers.jobs import JOBS_FILE, JobsFile, downstream, now, scancel

logger = logging.getLogger("dinov3_us")

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
REQUEUE_SIGNALS = {int(signal.SIGUSR1), int(signal.SIGUSR2)}
WAIT_FOR_REQUEUE_S = 180  # how long ranks != 0 wait for rank 0's requeue to end the job


class JobFailedError(DinoUSError, RuntimeError):
    """A job's command failed (its exit code and log are in the message)."""


@dataclass(frozen=True)
class JobContext:
    """Where a task runs: submitit executor, job id, rank, number of tasks, restarts so far."""

    executor: str  # slurm | local | debug | none
    job_id: str | None
    rank: int
    world_size: int
    local_world_size: int
    restarts: int

    @classmethod
    def current(cls) -> JobContext:
        """The context of the calling process (`none` outside a submitit job)."""
        try:
            env = submitit.JobEnvironment()
        except RuntimeError:
            return cls("none", None, 0, 1, 1, 0)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        return cls(env.name(), str(env.job_id), env.global_rank, env.num_tasks,
                   max(env.num_tasks // max(env.num_nodes, 1), 1), restarts)


def node_name() -> str:
    """The SLURM node this task runs on (the host name outside SLURM)."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


class _ErrorTee:
    """sys.stderr stand-in that passes everything through and keeps the tools' `error...` lines."""

    def __init__(self, stream):
        self.stream, self.errors, self._line = stream, [], ""

    def write(self, text: str) -> int:
        self._line += text
        *done, self._line = self._line.split("\n")
        self.errors += [line for line in done if line.startswith("error")]
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def run_tool(script: str, argv: list[str], errors: list[str] | None = None) -> int:
    """Run `python tools/<script> argv...` in this process; its exit code (0 when it returns normally).

    The `error...` lines the tool prints on stderr (its user-facing errors) are appended to `errors`.
    """
    path = TOOLS / script
    saved, saved_err = sys.argv, sys.stderr
    sys.argv = [str(path), *argv]
    tee = sys.stderr = _ErrorTee(saved_err)
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    finally:
        sys.argv, sys.stderr = saved, saved_err
        if errors is not None:
            errors += tee.errors
    return 0


@contextlib.contextmanager
def job_setup(ctx: JobContext, cwd: str) -> Iterator[None]:
    """The launch's working directory, torch.distributed variables and torch threads; undone afterwards."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.chdir(cwd)
    for var in DIST_VARS:  # never inherit the launching shell's (e.g. a torchrun around the launcher)
        os.environ.pop(var, None)
    if ctx.executor in ("slurm", "local"):
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    threads = int(cpus) if cpus and cpus.isdigit() else None
    if threads is None and ctx.executor == "local":
        threads = max(1, (os.cpu_count() or 1) // ctx.local_world_size)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


@contextlib.contextmanager
def signals_seen() -> Iterator[set[int]]:
    """Collect the numbers of the signals this process receives inside the block, whoever handles them.

    Uses `signal.set_wakeup_fd` (the interpreter writes each signal number there), so the trainer's
    own handlers need not cooperate. Outside the main thread, nothing is collected.
    """
    seen: set[int] = set()
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    try:
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield seen
    finally:
        if previous is not None:
            signal.set_wakeup_fd(previous)
        with contextlib.suppress(BlockingIOError):
            seen.update(os.read(r, 4096))
        os.close(r)
        os.close(w)


def should_requeue(seen: set[int]) -> bool:
    """Requeue after a USR1/USR2 (time limit, submitit preemption) or an unknown cause; not after SIGTERM alone."""
    if seen & REQUEUE_SIGNALS:
        return True
    return not (seen and seen <= {int(signal.SIGTERM)})


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint folder `ckpt_dir/<iteration>`, or None."""
    from dinov3_us.checkpointer.checkpointer import invalid_reason

    if not ckpt_dir.is_dir():
        return None
    folders = sorted((int(p.name), p) for p in ckpt_dir.iterdir() if p.name.isdigit() and p.is_dir())
    for _, path in reversed(folders):
        if invalid_reason(path) is None:
            return path
    return None


class ToolTask:
    """Runs `tools/<script> argv` as job `name` of the launch in `output_dir` (whose jobs.json it updates)."""

    script = ""

    def __init__(self, name: str, argv: list[str], output_dir: str, cwd: str, jobs_dir: str | None = None):
        self.name, self.argv, self.output_dir, self.cwd = name, list(argv), str(output_dir), str(cwd)
        self.jobs_dir = str(jobs_dir or output_dir)

    @property
    def jobs(self) -> JobsFile:
        """The launch's jobs.json."""
        return JobsFile(Path(self.jobs_dir) / JOBS_FILE)

    def command(self, argv: list[str] | None = None) -> str:
        """The equivalent shell command (what the job runs, in-process)."""
        return shlex.join(["python", f"tools/{self.script}", *(self.argv if argv is None else argv)])

    def record(self, ctx: JobContext, **fields) -> None:
        """Update this job's entry in jobs.json (rank 0 only; never fails the job)."""
        if ctx.rank != 0:
            return
        try:
            self.jobs.update_job(self.name, job_id=ctx.job_id if ctx.executor == "slurm" else None, **fields)
        except (OSError, ValueError) as err:
            logger.warning("could not update %s: %s", self.jobs.path, err)

    def resolve_argv(self) -> list[str]:
        """The arguments to run now (subclasses fill in what is only known when the job starts)."""
        return self.argv

    def __call__(self) -> dict:
        ctx = JobContext.current()
        with job_setup(ctx, self.cwd):
            try:
                argv = self.resolve_argv()
            except JobFailedError as err:
                return self.fail(ctx, str(err))
            self.record(ctx, state="RUNNING", started=now(), host=node_name(), command=self.command(argv))
            print(f"{self.name}: {self.command(argv)}  [job {ctx.job_id}, rank {ctx.rank}/{ctx.world_size}]",
                  flush=True)
            errors: list[str] = []
            code = run_tool(self.script, argv, errors)
            return self.finish(ctx, code, errors)

    def finish(self, ctx: JobContext, code: int, errors: list[str] | None = None) -> dict:
        """Record success, or fail the job (cancelling its dependents)."""
        if code == 0:
            self.record(ctx, state="COMPLETED", ended=now(), exit_code="0:0")
            if ctx.rank == 0:
                self.after_success(ctx)
            return {"name": self.name, "exit_code": 0}
        cause = f": {errors[-1]}" if errors else ""
        return self.fail(ctx, f"`{self.command()}` exited with code {code}{cause}")

    def after_success(self, ctx: JobContext) -> None:
        """Hook run on rank 0 after a successful command."""

    def fail(self, ctx: JobContext, message: str):
        """Mark this job FAILED and its dependents CANCELLED (cancelling them on SLURM), then raise."""
        if ctx.rank == 0:
            cancelled: list[str] = []

            def apply(data: dict) -> None:
                jobs = data.get("jobs", {})
                for name in downstream(jobs, self.name):
                    if jobs[name].get("state") in (None, "PENDING", "SUBMITTED"):
                        jobs[name]["state"] = "CANCELLED"
                        jobs[name]["note"] = f"cancelled: {self.name} failed"
                        if jobs[name].get("job_id"):
                            cancelled.append(str(jobs[name]["job_id"]))
                if self.name in jobs:
                    jobs[self.name].update(state="FAILED", ended=now(), error=message)

            with contextlib.suppress(OSError, ValueError):
                if self.jobs.exists():
                    self.jobs.modify(apply)
            if ctx.executor == "slurm":
                scancel(cancelled)
        raise JobFailedError(message)


class PretrainTask(ToolTask, submitit.helpers.Checkpointable):
    """`tools/train.py` on every task of the job; checkpoints and requeues on USR1/USR2 (see the module doc)."""

    script = "train.py"

    def __call__(self) -> dict:
        ctx = JobContext.current()
        with job_setup(ctx, self.cwd):
            self.record(ctx, state="RUNNING", started=now(), host=node_name(), restarts=ctx.restarts)
            print(f"pretrain attempt {ctx.restarts + 1} (SLURM_RESTART_COUNT={ctx.restarts}) job {ctx.job_id} "
                  f"rank {ctx.rank}/{ctx.world_size} on {node_name()}: {self.command()}", flush=True)
            errors: list[str] = []
            with signals_seen() as seen:
                code = run_tool(self.script, self.argv, errors)
            if code == REQUEUE_EXIT_CODE:
                return self.preempted(ctx, seen)
            if code != 0 and seen & REQUEUE_SIGNALS:
                # the signal came outside the training loop, to submitit's own handler, which has
                # checkpointed this task and requeued the job (its sys.exit ended the tool): not a failure
                print(f"pretrain: {signal.Signals(min(seen & REQUEUE_SIGNALS)).name} handled by submitit "
                      f"(exit {code}); the job is requeued", flush=True)
                sys.exit(code)
            return self.finish(ctx, code, errors)

    def preempted(self, ctx: JobContext, seen: set[int]) -> dict:
        """The trainer checkpointed after a signal: requeue (rank 0), or wait for the requeue to end us."""
        ckpt = latest_checkpoint(Path(self.output_dir) / "ckpt")
        names = sorted(signal.Signals(s).name for s in seen) or ["unknown"]
        if not should_requeue(seen):
            print(f"pretrain: {', '.join(names)} received; checkpoint {ckpt} kept. SLURM is ending this job "
                  "(cancelled, or preempted and requeued by SLURM itself): not requeuing it.", flush=True)
            self.record(ctx, state="TERMINATED", note=f"stopped by {', '.join(names)} at checkpoint {ckpt}")
            sys.exit(REQUEUE_EXIT_CODE)
        if ctx.rank != 0:
            if ctx.executor == "slurm":  # rank 0 requeues the whole job, which ends this process
                time.sleep(WAIT_FOR_REQUEUE_S)
                raise JobFailedError(f"rank {ctx.rank}: rank 0 did not requeue job {ctx.job_id} within "
                                     f"{WAIT_FOR_REQUEUE_S} s")
            return {"name": self.name, "exit_code": REQUEUE_EXIT_CODE, "checkpoint": str(ckpt)}
        handler = signal.getsignal(signal.SIGUSR2)
        if not callable(handler):  # no submitit handler: debug executor or a direct call
            return self.fail(ctx, f"pretraining was interrupted ({', '.join(names)}) after checkpoint {ckpt}; "
                                  "launch again with --resume to continue from it")
        print(f"pretrain: {', '.join(names)} received; checkpoint {ckpt} written; handing over to submitit "
              "to requeue the job", flush=True)
        self.record(ctx, state="REQUEUED", note=f"requeued after {', '.join(names)} at checkpoint {ckpt}",
                    requeued_at=now())
        try:
            handler(signal.SIGUSR2, None)  # submitit: checkpoint() + countdown + `scontrol requeue` + exit
        except Exception as err:  # noqa: BLE001 - e.g. "timed-out too many times": the job ends here
            return self.fail(ctx, f"not requeued after checkpoint {ckpt}: {err}")
        return self.fail(ctx, f"submitit's handler returned without requeuing (checkpoint {ckpt})")


class ConvertTask(ToolTask):
    """`tools/convert_checkpoint.py OUT/ckpt/<latest> --output OUT/teacher.pth` (latest found when it runs)."""

    script = "convert_checkpoint.py"

    def __init__(self, name: str, checkpoint: str | None, teacher: str, output_dir: str, cwd: str,
                 jobs_dir: str | None = None):
        self.checkpoint, self.teacher = checkpoint, teacher
        super().__init__(name, [checkpoint or f"{output_dir}/ckpt/<latest>", "--output", teacher], output_dir, cwd,
                         jobs_dir)

    def resolve_argv(self) -> list[str]:
        """Use the newest complete checkpoint of the run unless one was named."""
        ckpt = self.checkpoint
        if ckpt is None:
            found = latest_checkpoint(Path(self.output_dir) / "ckpt")
            if found is None:
                raise JobFailedError(f"no complete checkpoint in {self.output_dir}/ckpt to convert")
            ckpt = str(found)
        self.argv = [ckpt, "--output", self.teacher]
        return self.argv


class EvalTask(ToolTask):
    """`tools/eval_<task>.py ...`; afterwards `OUT/eval/comparison.md` is rebuilt from every finished evaluation."""

    def __init__(self, name: str, script: str, argv: list[str], output_dir: str, cwd: str, report_dir: str,
                 jobs_dir: str | None = None):
        self.script = script
        self.report_dir = report_dir
        super().__init__(name, argv, output_dir, cwd, jobs_dir)

    def after_success(self, ctx: JobContext) -> None:
        """Rebuild the comparison table of the launch's evaluations that have a results.json."""
        write_report(self.jobs, Path(self.report_dir))


def write_report(jobs: JobsFile, report_dir: Path) -> Path | None:
    """Run `tools/compare_results.py` on the finished evaluations of a launch -> report_dir/comparison.md."""
    data = jobs.read()
    results = [r["results"] for r in data.get("jobs", {}).values()
               if r.get("kind") == "eval" and r.get("results") and Path(r["results"]).is_file()]
    if not results:
        return None
    with jobs.locked():  # two evaluations finishing together must not write the figure at once
        with contextlib.redirect_stdout(sys.stderr):
            code = run_tool("compare_results.py", [*results, "--output-dir", str(report_dir)])
    if code != 0:
        logger.warning("tools/compare_results.py exited with %d; no comparison table", code)
        return None
    return report_dir / "comparison.md"
