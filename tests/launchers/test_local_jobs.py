"""The local launcher's jobs (dinov3_us/launch/local_controller.py): a task that dies ends its siblings at once, and no
process of a job outlives the launcher, whether a task fails, the user presses Ctrl-C or the launcher is killed.

Every run is the tiny CPU recipe, 2 processes, as `--cluster local` runs it; processes are found by PID and
process group (tests/procs.py), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launcher_helpers import REPO, read_jobs, run_launcher, tiny_args
from ports import HeldPorts
from procs import children, in_group

from dinov3_us.rendezvous import fixed_port

pytestmark = pytest.mark.slow
BOUND_S = 60  # "the others stop within a minute"; the controller's own grace is 10 s


def launch(out: Path, shards: Path, *extra: str) -> subprocess.Popen:
    """`submit_pretrain.py --cluster local` with a long tiny pretraining, in a process group of its own."""
    args = tiny_args(shards, out, "--cluster", "local", "optim.epochs=100", "train.log_period=1", *extra)
    return subprocess.Popen([sys.executable, str(REPO / "launchers/submit_pretrain.py"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT at its default in the launcher, as in a terminal: a suite started in the background by a shell
    without job control (`make test &`, nohup) inherits SIGINT ignored, and Python keeps it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert proc is None or proc.poll() is None, f"the launcher ended while waiting for {what}: " + \
            proc.communicate()[0][-3000:]
        time.sleep(0.05)
    return value


def controller(out: Path, proc: subprocess.Popen) -> int:
    """The pid of the pretraining job's controller (= its process group), from jobs.json."""
    def job_id():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(read_jobs(out)["jobs"]["pretrain"]["job_id"])
    return wait_until(job_id, "the pretraining job", proc)


@contextlib.contextmanager
def cleanup(proc: subprocess.Popen):
    """Whatever the test asserts, end the launcher's and its jobs' process groups afterwards."""
    groups = {proc.pid}
    try:
        yield groups
    finally:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=30)


def test_a_rank_killed_at_start_up_ends_its_sibling_and_the_job_within_the_bound(tmp_path, phantom_shards):
    out = tmp_path / "run"
    proc = launch(out, phantom_shards)
    with cleanup(proc) as groups:
        pgid = controller(out, proc)
        groups.add(pgid)
        tasks = wait_until(lambda: both if len(both := children(pgid)) == 2 else None, "the job's two tasks", proc)
        rank0 = next(t for t in tasks if t.environ_has(b"SUBMITIT_LOCAL_GLOBALID=0"))
        os.kill(rank0.pid, signal.SIGKILL)  # before its process group could form
        killed = time.monotonic()
        wait_until(lambda: not in_group(pgid), "the sibling to end", timeout=BOUND_S)
        stdout, _ = proc.communicate(timeout=BOUND_S)
        assert time.monotonic() - killed < BOUND_S
    assert proc.returncode == 1, stdout[-3000:]
    assert "task 0 (rank 0) was killed by SIGKILL: ending the job's other task(s)" in stdout
    assert "FAILED: pretrain" in stdout and "Traceback" not in stdout
    jobs = read_jobs(out)["jobs"]
    assert jobs["pretrain"]["state"] == "FAILED" and "rank 0) was killed by SIGKILL" in jobs["pretrain"]["error"]
    assert all(jobs[name]["state"] == "CANCELLED" for name in ("linear", "knn"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_stopped_launcher_leaves_no_job_process_and_the_run_keeps_its_checkpoint(tmp_path, phantom_shards, sig):
    """Ctrl-C: the launcher stops the job and says how to resume. kill -9 (a time-out, an OOM kill): the job's
    controller learns it from the kernel and stops the tasks. Either way the tasks checkpoint first."""
    out = tmp_path / "run"
    proc = launch(out, phantom_shards)
    with cleanup(proc) as groups:
        pgid = controller(out, proc)
        groups.add(pgid)
        wait_until(lambda: (out / "training_metrics.jsonl").is_file(), "the first iterations", proc)
        os.kill(proc.pid, sig)
        stdout, _ = proc.communicate(timeout=120)
        wait_until(lambda: not in_group(pgid), "the job's processes to end", timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stdout[-3000:]
        assert "pretrain stopped; launch again with --resume to continue" in stdout
        assert read_jobs(out)["jobs"]["pretrain"]["state"] == "CANCELLED"
    ckpts = [p for p in (out / "ckpt").iterdir() if (p / "COMPLETE.json").is_file()]
    iterations = [json.loads(line)["iteration"] for line in (out / "training_metrics.jsonl").read_text().splitlines()]
    assert ckpts and max(int(p.name) for p in ckpts) == iterations[-1]  # the step in progress, then saved


def test_a_master_port_set_where_the_launcher_runs_is_the_port_the_ranks_meet_on(tmp_path, phantom_shards):
    with HeldPorts() as held:
        port = next(p for p in range(fixed_port(7), 65536) if held.listen(p))  # free now; released below
    out = tmp_path / "run"
    proc = run_launcher("submit_pretrain.py", tiny_args(phantom_shards, out, "--cluster", "local", "--no-eval"),
                        env={**os.environ, "MASTER_PORT": str(port)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"MASTER_PORT={port} is set here: every job's ranks rendezvous on that port" in proc.stdout
    assert re.search(rf"process group: 2 rank\(s\), gloo on cpu, rendezvous \S+:{port} \(MASTER_PORT\)",
                     (out / "log.txt").read_text())
