"""pytest plugin (tests/conftest.py loads it): a process the test suite started that is still alive at its end
fails the run, and is killed, by PID.

Every process the suite starts inherits `SESSION_VAR` (subprocesses, launchers, local jobs, and SLURM jobs,
since sbatch exports the submitter's environment); a process that lost it (a test that gave a child a
fresh environment) is still found while it descends from pytest.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from multiprocessing import resource_tracker

import pytest
from procs import Proc, descendants, live_processes

SESSION_VAR = "DINOV3_US_TEST_SESSION"
GRACE_S = 15.0  # a process ending as the last test ends is not a leak


def pytest_configure(config):
    os.environ[SESSION_VAR] = secrets.token_hex(8)


def started_by_this_session() -> list[Proc]:
    """The live processes that this pytest process started (other than itself)."""
    mark = f"{SESSION_VAR}={os.environ[SESSION_VAR]}".encode()
    me = os.getpid()
    # pytest's own multiprocessing resource tracker (a test used a spawn context) ends with pytest: not a leak
    tracker = getattr(getattr(resource_tracker, "_resource_tracker", None), "_pid", None)
    mine = {p.pid for p in descendants(me)}
    return [p for p in live_processes() if p.pid not in (me, tracker) and (p.pid in mine or p.environ_has(mark))]


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a process the suite started is still alive (after `GRACE_S`), and kill it."""
    deadline = time.monotonic() + GRACE_S
    while (leaked := started_by_this_session()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not leaked:
        return
    report = session.config.pluginmanager.get_plugin("terminalreporter")
    report.write_line(f"FAILED: {len(leaked)} process(es) started by the test suite were still running at its end "
                      "(now killed):", red=True)
    for p in leaked:
        report.write_line(f"  pid {p.pid} (parent {p.ppid}, group {p.pgid}): {p.cmdline[:300]}")
        try:
            os.kill(p.pid, signal.SIGKILL)
        except OSError:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
