"""The callables submitit runs inside the jobs: each calls its stage's Python entry point with typed arguments.

`PretrainJob` -> `dinov3_us.launch.cli_train.train` (which also writes `OUT/teacher.pth`), `ConvertJob` ->
`dinov3_us.weights.checkpoint.convert_checkpoint` (`submit_eval.py` only), `EvalJob` ->
`dinov3_us.eval.protocols.evaluate`. Every task process (one per GPU, or per
CPU process) gets torch.distributed's variables from submitit's `TorchDistributedEnvironment` (SLURM or local)
except its port (the ranks meet on a port of the kernel's choosing, published in the run folder,
`dinov3_us.rendezvous`; a MASTER_PORT set where the launcher ran wins), the launch's working directory, and as
many torch threads as the job has CPUs per task. A job writes what only it knows into `OUT/jobs.json` (start,
host, attempt, the command it is equivalent to, its error); the job *states* come from SLURM's accounting (or,
for a local run, from the launcher that runs the jobs), and SLURM cancels the dependents of a failed job
itself (`--kill-on-invalid-dep=yes`).

Requeue: while `Trainer.run()` trains, its `PreemptionFlag` owns SIGUSR1/SIGUSR2/SIGTERM (submitit's
USR2 handler is replaced). The trainer checkpoints after the current step and returns 75; the
handlers it replaced are back in place by then. `PretrainJob` watches which signals arrived (a
wakeup fd, which does not depend on the handlers) and, on rank 0, hands a USR1/USR2 over to
submitit's own handler, exactly as if it had received the signal: `checkpoint()` (this object) is
pickled again, the time-limit countdown (`--max-num-timeout`) is applied, `scontrol requeue` runs
and the process exits. The requeued job runs this job again and the trainer resumes from the
checkpoint it has just written. A SIGTERM alone means SLURM is cancelling the job (or preempting
it, and then requeues it itself): the checkpoint is kept and nothing is requeued. Outside
training (model building, export), a USR2 reaches submitit's handler directly, with the same result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from dinov3_us.errors import DinoUSError
from dinov3_us.launch.jobs import JobsFile, now
from dinov3_us.run_dir import RunDir
from dinov3_us.train.signals import REQUEUE_EXIT_CODE

logger = logging.getLogger("dinov3_us")

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
REQUEUE_SIGNALS = {int(signal.SIGUSR1), int(signal.SIGUSR2)}
WAIT_FOR_REQUEUE_S = 180  # how long ranks != 0 wait for rank 0's requeue to end the job


class JobFailedError(DinoUSError, RuntimeError):
    """A job's stage failed (the cause is in the message)."""


@dataclass(frozen=True)
class JobContext:
    """Where a job runs: submitit executor, job id, rank, number of tasks, restarts so far."""

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


@contextlib.contextmanager
def job_setup(ctx: JobContext, cwd: str) -> Iterator[None]:
    """The launch's working directory, torch.distributed variables and torch threads; undone afterwards."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.chdir(cwd)
    explicit_port = os.environ.get("MASTER_PORT")  # the launching shell's (sbatch and the local launcher pass it on)
    for var in DIST_VARS:
        os.environ.pop(var, None)
    if ctx.executor in ("slurm", "local"):
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        os.environ.pop("MASTER_PORT")  # submitit's is drawn by job id: any process may hold it (dinov3_us.rendezvous)
        if explicit_port:
            os.environ["MASTER_PORT"] = explicit_port
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


@dataclass
class StageJob:
    """Job `name` of the launch recorded in `launch`'s jobs.json, run from `cwd`; subclasses say what it runs."""

    name: str
    launch: RunDir
    cwd: str

    def command(self) -> str:
        """The shell command this job is equivalent to (what a user would type to run the stage by hand)."""
        raise NotImplementedError

    def work(self, ctx: JobContext) -> int:
        """Run the stage (raises DinoUSError on a user error); its exit code."""
        raise NotImplementedError

    def record(self, ctx: JobContext, **fields) -> None:
        """Write `fields` into this job's entry of jobs.json (rank 0 only; never fails the job)."""
        if ctx.rank != 0:
            return
        jobs = JobsFile(self.launch.jobs)
        try:
            jobs.update_job(self.name, job_id=ctx.job_id if ctx.executor == "slurm" else None, **fields)
        except (OSError, ValueError) as err:
            logger.warning("could not update %s: %s", jobs.path, err)

    def start(self, ctx: JobContext, **fields) -> None:
        """Record and print the start of this job."""
        command = self.command()
        self.record(ctx, started=now(), host=node_name(), command=command, **fields)
        print(f"{self.name}: {command}  [job {ctx.job_id}, rank {ctx.rank}/{ctx.world_size} on {node_name()}]",
              flush=True)

    def run_stage(self, ctx: JobContext) -> int:
        """`work()`, a user error becoming a failed job; the stage's exit code otherwise."""
        try:
            return self.work(ctx)
        except DinoUSError as err:
            self.fail(ctx, f"`{self.command()}` exited with code 2: error (rank {ctx.rank}): {err}")

    def __call__(self) -> dict:
        ctx = JobContext.current()
        with job_setup(ctx, self.cwd):
            self.start(ctx)
            self.run_stage(ctx)
            if ctx.rank == 0:
                self.record(ctx, ended=now())
                self.after_success()
            return {"name": self.name, "exit_code": 0}

    def after_success(self) -> None:
        """Run on rank 0 after the stage succeeded."""

    def fail(self, ctx: JobContext, message: str):
        """Record the error (rank 0) and raise it: the job fails, and SLURM cancels its dependents."""
        self.record(ctx, ended=now(), error=message)
        raise JobFailedError(message)


@dataclass
class PretrainJob(StageJob, submitit.helpers.Checkpointable):
    """`pretrain()` on every task of the job; checkpoints and requeues on USR1/USR2 (see the module doc)."""

    config_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    allow_config_change: bool = False  # the launcher's --resume

    def command(self) -> str:
        """`python tools/train.py ...`."""
        config = ["--config-file", self.config_file] if self.config_file else []
        change = ["--allow-config-change"] if self.allow_config_change else []
        return shlex.join(["python", "tools/train.py", *config, "--output-dir", str(self.launch.root), *change,
                           *self.overrides])

    def work(self, ctx: JobContext) -> int:
        """Resolve the config and train (resuming from the run's latest checkpoint)."""
        from dinov3_us.configs import load_config
        from dinov3_us.launch.cli_train import train

        return train(load_config(self.config_file, self.overrides), self.launch,
                     allow_config_change=self.allow_config_change)

    def __call__(self) -> dict:
        ctx = JobContext.current()
        with job_setup(ctx, self.cwd):
            print(f"pretrain attempt {ctx.restarts + 1} (SLURM_RESTART_COUNT={ctx.restarts})", flush=True)
            self.start(ctx, restarts=ctx.restarts)
            with signals_seen() as seen:
                try:
                    code = self.run_stage(ctx)
                except SystemExit:
                    if seen & REQUEUE_SIGNALS:  # the signal came outside the training loop, to submitit's own
                        # handler, which has checkpointed this job and requeued it: not a failure
                        print(f"pretrain: {signal.Signals(min(seen & REQUEUE_SIGNALS)).name} handled by submitit; "
                              "the job is requeued", flush=True)
                    raise
            if code == REQUEUE_EXIT_CODE:
                return self.preempted(ctx, seen)
            self.record(ctx, ended=now())
            return {"name": self.name, "exit_code": 0}

    def preempted(self, ctx: JobContext, seen: set[int]) -> dict:
        """The trainer checkpointed after a signal: requeue (rank 0), or wait for the requeue to end us."""
        ckpt = self.launch.latest()
        names = sorted(signal.Signals(s).name for s in seen) or ["unknown"]
        if not should_requeue(seen):
            print(f"pretrain: {', '.join(names)} received; checkpoint {ckpt} kept. SLURM is ending this job "
                  "(cancelled, or preempted and requeued by SLURM itself): not requeuing it.", flush=True)
            self.record(ctx, note=f"stopped by {', '.join(names)} at checkpoint {ckpt}")
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
        self.record(ctx, note=f"requeued after {', '.join(names)} at checkpoint {ckpt}", requeued_at=now())
        try:
            handler(signal.SIGUSR2, None)  # submitit: checkpoint() + countdown + `scontrol requeue` + exit
        except Exception as err:  # noqa: BLE001 - e.g. "timed-out too many times": the job ends here
            return self.fail(ctx, f"not requeued after checkpoint {ckpt}: {err}")
        return self.fail(ctx, f"submitit's handler returned without requeuing (checkpoint {ckpt})")


@dataclass
class ConvertJob(StageJob):
    """The teacher of the DCP checkpoint folder `checkpoint` -> the launch's teacher.pth (`submit_eval.py` on a
    checkpoint that is not converted yet; a pretraining writes its own teacher.pth)."""

    checkpoint: Path | None = None

    def command(self) -> str:
        """`python tools/convert_checkpoint.py CKPT --output OUT/teacher.pth`."""
        return shlex.join(["python", "tools/convert_checkpoint.py", str(self.checkpoint), "--output",
                           str(self.launch.teacher)])

    def work(self, ctx: JobContext) -> int:
        """Convert (the job has one task)."""
        from dinov3_us.weights.checkpoint import convert_checkpoint

        convert_checkpoint(self.checkpoint, self.launch.teacher)
        return 0


@dataclass
class EvalJob(StageJob):
    """Evaluation `task` with an evaluation YAML, flags ({'section.key': value}) and overrides; then the report."""

    task: str = "linear"
    config_file: str | None = None
    flags: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        """Where this evaluation writes (OUT/eval/<name>)."""
        return self.launch.eval_dir(self.name)

    def config(self):
        """The resolved evaluation config (raises DinoUSError)."""
        from dinov3_us.eval.config import load_eval_config

        return load_eval_config(self.config_file, self.flags, self.overrides)

    def command(self) -> str:
        """`python tools/eval_<task>.py ...`."""
        from dinov3_us.eval.cli import FLAG_KEYS

        options = {key: f"--{name.replace('_', '-')}" for name, key in FLAG_KEYS.items()}
        argv = ["--config-file", self.config_file] if self.config_file else []
        for key, value in self.flags.items():
            if key == "features.progress":
                argv += [] if value else ["--no-progress"]
            else:
                argv += [options[key], *(map(str, value) if isinstance(value, list) else [str(value)])]
        return shlex.join(["python", f"tools/eval_{self.task}.py", *argv, "--output-dir", str(self.out_dir),
                           *self.overrides])

    def work(self, ctx: JobContext) -> int:
        """Evaluate under the job's process group."""
        from dinov3_us.eval.protocols import evaluate

        evaluate(self.task, self.config(), self.out_dir)
        return 0

    def after_success(self) -> None:
        """Rebuild the comparison table of the launch's evaluations that have a results.json, and the run report."""
        write_report(JobsFile(self.launch.jobs), self.launch.report.parent)


def write_report(jobs: JobsFile, report_dir: Path) -> Path | None:
    """The comparison of a launch's finished evaluations -> report_dir/comparison.md (None when there is none);
    for a pretraining launch, its run report (`OUT/report.md`, `.html`) too."""
    from dinov3_us.eval.compare import write_comparison
    from dinov3_us.eval.run_report import write_run_report

    results = [r["results"] for r in jobs.read().get("jobs", {}).values()
               if r.get("kind") == "eval" and r.get("results") and Path(r["results"]).is_file()]
    if not results:
        return None
    try:
        with jobs.locked():  # two evaluations finishing together must not write the figures at once
            write_comparison(results, report_dir)
            run = RunDir(jobs.path.parent)
            if run.metrics.is_file():
                write_run_report(run)
    except DinoUSError as err:
        logger.warning("no comparison table: %s", err)
        return None
    return report_dir / "comparison.md"
