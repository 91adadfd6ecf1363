"""The local launcher's jobs: one controller process per job that starts its tasks and ends them together.

`LocalExecutor` is submitit's local executor (same pickles, logs, `LocalJob` and job environment)
with this module as the job's controller instead of submitit's, which waits for every task even
after one has died (a rank then waits for its dead sibling until the collectives time out) and
outlives a launcher that was killed. Here:

- a task that fails (a non-zero exit, or a signal) ends the job: the other tasks get SIGTERM, then
  SIGKILL after `SIBLING_GRACE_S`; the controller prints which task failed and why, and writes it to
  `<folder>/<job id>_controller.json` for the launcher's report;
- the job's processes form one process group of their own (the controller leads it), so the launcher
  can end all of them at once (`stop_job`);
- the controller gets SIGTERM when the launcher dies (`PR_SET_PDEATHSIG`: also after a SIGKILL or a
  time-out of the launcher), and each task gets SIGKILL when the controller dies;
- on SIGTERM or SIGINT (the launcher's Ctrl-C, `job.cancel()`) the tasks get SIGTERM (the trainer
  checkpoints and stops) and SIGKILL after `STOP_GRACE_S`;
- at `timeout_min` minus `signal_delay_s` the tasks get USR2 (checkpoint and requeue, as on SLURM); a
  task that asks for a requeue (exit code 144, submitit's) starts the job's tasks again, with a new
  `DINOV3_US_LOCAL_ATTEMPT`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit
from submitit.local.local import LocalJob

SIBLING_GRACE_S = 10.0  # the survivors of a failed task cannot checkpoint (their collectives fail): no long wait
STOP_GRACE_S = 60.0  # a stopped job's tasks checkpoint before they exit
REQUEUE_EXIT_CODE = 144  # submitit's local requeue (LocalJobEnvironment._requeue)
MAX_ATTEMPTS = 6
POLL_S = 0.1
PR_SET_PDEATHSIG = 1
CONTROLLER_MODULE = "dinov3_us.launch.local_controller"  # what each job's controller process runs


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def describe_exit(code: int) -> str:
    """`exited with code 2` / `was killed by SIGKILL`."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def status_file(folder: Path, job_id: str) -> Path:
    """Where the controller of job `job_id` records why the job ended."""
    return Path(folder) / f"{job_id}_controller.json"


class Controller:
    """Runs the tasks of one job (the environment submitit's LocalExecutor sets) and ends them together."""

    def __init__(self, folder: Path):
        env = os.environ
        self.folder = Path(folder)
        self.ntasks = int(env["SUBMITIT_LOCAL_NTASKS"])
        self.command = json.loads(env["DINOV3_US_LOCAL_COMMAND"])
        self.timeout_s = float(env["SUBMITIT_LOCAL_TIMEOUT_S"])
        self.signal_delay_s = float(env["SUBMITIT_LOCAL_SIGNAL_DELAY_S"])
        self.job_id = str(os.getpid())
        self.tasks: list[subprocess.Popen] = []
        self.stop_signal: int | None = None

    def _on_stop(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.stop_signal = signum

    def run(self) -> int:
        """Run the job (again after each requeue); the controller's exit code (0: every task succeeded)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        failure = None
        for attempt in range(MAX_ATTEMPTS):
            codes, failure = self._attempt(attempt)
            if failure is not None or self.stop_signal is not None or REQUEUE_EXIT_CODE not in codes:
                break
            print(f"[local job {self.job_id}] requeued: starting its {self.ntasks} task(s) again", flush=True)
        if failure is None and self.stop_signal is not None:
            failure = f"stopped by {signal.Signals(self.stop_signal).name}"
        status_file(self.folder, self.job_id).write_text(json.dumps({"failure": failure}) + "\n")
        return 0 if failure is None else 1

    def _attempt(self, attempt: int) -> tuple[list[int | None], str | None]:
        self._start(attempt)
        start = time.monotonic()
        warned = False
        try:
            while True:
                codes = [t.poll() for t in self.tasks]
                failed = [(k, c) for k, c in enumerate(codes) if c not in (None, 0, REQUEUE_EXIT_CODE)]
                if failed:
                    k, code = failed[0]
                    failure = f"task {k} (rank {k}) {describe_exit(code)}"
                    if any(c is None for c in codes):
                        print(f"[local job {self.job_id}] {failure}: ending the job's other task(s)", flush=True)
                    self._end_tasks(SIBLING_GRACE_S)
                    return codes, failure
                if all(c is not None for c in codes):
                    return codes, None
                if self.stop_signal is not None:
                    self._end_tasks(STOP_GRACE_S)
                    return [t.poll() for t in self.tasks], None
                elapsed = time.monotonic() - start
                if not warned and elapsed >= self.timeout_s - self.signal_delay_s:
                    warned = True
                    self._signal_tasks(signal.SIGUSR2)  # checkpoint and requeue, as SLURM's --signal
                if elapsed >= self.timeout_s:
                    self._end_tasks(STOP_GRACE_S)
                    return [t.poll() for t in self.tasks], f"reached its time limit ({self.timeout_s / 60:.0f} min)"
                time.sleep(POLL_S)
        finally:
            self._end_tasks(0.0)  # nothing outlives the attempt, whatever happened above

    def _start(self, attempt: int) -> None:
        from submitit.core.utils import JobPaths

        self.folder.mkdir(parents=True, exist_ok=True)
        self.tasks = []
        for k in range(self.ntasks):
            paths = JobPaths(self.folder, self.job_id, k)
            env = dict(os.environ, SUBMITIT_LOCAL_LOCALID=str(k), SUBMITIT_LOCAL_GLOBALID=str(k),
                       SUBMITIT_LOCAL_JOB_ID=self.job_id, DINOV3_US_LOCAL_ATTEMPT=str(attempt))
            with open(paths.stdout, "a") as out, open(paths.stderr, "a") as err:
                self.tasks.append(subprocess.Popen(self.command, env=env, stdout=out, stderr=err,
                                                   preexec_fn=lambda: set_parent_death_signal(signal.SIGKILL)))

    def _signal_tasks(self, sig: int) -> None:
        for task in self.tasks:
            if task.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    task.send_signal(sig)

    def _end_tasks(self, grace_s: float) -> None:
        """SIGTERM to the tasks still running, SIGKILL to those still running after `grace_s`; reap them all."""
        if grace_s > 0:
            self._signal_tasks(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while any(t.poll() is None for t in self.tasks) and time.monotonic() < deadline:
                time.sleep(POLL_S)
        self._signal_tasks(signal.SIGKILL)
        for task in self.tasks:
            task.wait()


class ControlledJob(LocalJob):
    """A job of `LocalExecutor`: submitit's LocalJob, which looks for a dead task's result for 2 s, not 15."""

    _results_timeout_s = 2  # submitit waits for a network file system; a local job's files are here at once


class LocalExecutor(submitit.LocalExecutor):
    """submitit's LocalExecutor whose jobs run under `Controller` (see the module docstring)."""

    job_class = ControlledJob

    def _submit_command(self, command: str) -> ControlledJob:
        ntasks = self.parameters.get("tasks_per_node", 1)
        env = dict(os.environ, SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_NTASKS=str(ntasks),
                   SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_JOB_NUM_NODES="1",
                   SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", 2.0))),
                   SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
                   CUDA_VISIBLE_DEVICES=",".join(map(str, range(self.parameters.get("gpus_per_node", 0)))),
                   DINOV3_US_LOCAL_COMMAND=json.dumps(shlex.split(command)), DINOV3_US_LAUNCHER_PID=str(os.getpid()))
        process = subprocess.Popen([sys.executable, "-m", CONTROLLER_MODULE, str(self.folder)], env=env,
                                   start_new_session=True)  # the job's own process group: stop_job ends it whole
        return ControlledJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks)))


def stop_job(job: LocalJob, grace_s: float = STOP_GRACE_S + 10) -> None:
    """End a local job and every process in it: SIGTERM to its controller, SIGKILL to its group after `grace_s`."""
    pgid = int(job.job_id)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while job.state == "RUNNING" and time.monotonic() < deadline:
        time.sleep(POLL_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def job_failure(job: LocalJob) -> str | None:
    """Why the controller ended job `job` (a failed task, a stop, the time limit), or None."""
    try:
        return json.loads(status_file(job.paths.folder, job.job_id).read_text()).get("failure")
    except (OSError, ValueError):
        return None


def main(argv: list[str]) -> int:
    """`python -m dinov3_us.launch.local_controller <submitit folder>` (started by `LocalExecutor`)."""
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != int(os.environ.get("DINOV3_US_LAUNCHER_PID", os.getppid())):
        return 1  # the launcher died before the line above took effect
    return Controller(Path(argv[1])).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
