"""Where a bench result came from: every `bench/results/*.json` carries `stamp()` under the key "stamp".

The commit (and whether the tree had uncommitted changes), the date, the command line, torch's version, the
CPU model, the cores and threads torch used, and the GPU where there is one (None without CUDA). A number
without these cannot be compared with a later one.

Result files written before results were stamped keep their numbers and carry `UNSTAMPED` under "stamp"
instead (`{"unstamped": true, "note": ...}`, plus `results_committed_in` / `results_committed_date`: the
commit that last changed the file, so the code that made the numbers is at or before it);
`stamp_problem()` is the check that every file has one or the other (tests/bench/test_stamps.py).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The keys every stamp() has (values may be None where unknown: no GPU, no git).
STAMP_KEYS = ("commit", "uncommitted_changes", "date", "command", "torch", "python", "cpu", "cores", "torch_threads",
              "gpu")
UNSTAMPED = {"unstamped": True, "note": "recorded before results were stamped; commit, date and machine unknown "
                                        "beyond what the file itself says"}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else `platform.processor()`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stamp() -> dict:
    """Commit, date, command, torch version, CPU, cores, torch threads and GPU of this run."""
    import torch

    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "uncommitted_changes": bool(dirty) if dirty is not None else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def stamp_problem(result: object) -> str | None:
    """Why a bench result's "stamp" is neither a full `stamp()` nor the `UNSTAMPED` mark; None when it is one."""
    if not isinstance(result, dict) or "stamp" not in result:
        return 'no top-level "stamp" key'
    got = result["stamp"]
    if isinstance(got, dict) and got.get("unstamped") is True:
        return None if isinstance(got.get("note"), str) and got["note"] else 'an "unstamped" mark without a "note"'
    if not isinstance(got, dict):
        return f'"stamp" is a {type(got).__name__}, not an object'
    missing = [k for k in STAMP_KEYS if k not in got]
    if missing:
        return f'"stamp" lacks {", ".join(missing)}'
    empty = [k for k in ("commit", "date", "torch", "cpu", "cores", "torch_threads") if not got[k]]
    return f'"stamp" has no value for {", ".join(empty)}' if empty else None
