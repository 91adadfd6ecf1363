"""The suite's leak check (tests/leakcheck.py): a test that leaves a process running fails the whole run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from procs import live_processes

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_a_process_left_running_by_a_test_fails_the_run_and_is_killed(tmp_path):
    (tmp_path / "test_leaks.py").write_text(
        "import subprocess, sys\n\n\n"
        "def test_leaves_a_process():\n"
        "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "leakcheck", "-p", "no:cacheprovider",
                           "test_leaks.py"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(TESTS)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "1 passed" in proc.stdout  # the test itself passed: the leak alone fails the run
    assert "FAILED: 1 process(es) started by the test suite were still running at its end" in proc.stdout
    leaked = int(re.search(r"pid (\d+) \(parent", proc.stdout).group(1))
    assert leaked not in {p.pid for p in live_processes()}
