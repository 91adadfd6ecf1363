"""The live processes of this machine, read from /proc: the suite's leak check and the launcher tests use them.

Processes are found by PID, process group or an environment variable, never by name. Zombies (dead,
waiting for their parent to collect them) are not live.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    """One process: its ids, state letter (R, S, D, ...) and command line."""

    pid: int
    ppid: int
    pgid: int
    state: str
    cmdline: str

    def environ_has(self, entry: bytes) -> bool:
        """Whether its environment (as it was at exec) holds `entry` (`b"KEY=value"`)."""
        try:
            return entry in Path(f"/proc/{self.pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False


def live_processes() -> list[Proc]:
    """Every process of the machine that is not a zombie (empty where /proc is absent)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # it ended while we looked
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if fields[0] != "Z":
            found.append(Proc(int(entry.name), int(fields[1]), int(fields[2]), fields[0], cmdline))
    return found


def in_group(pgid: int) -> list[Proc]:
    """The live processes of process group `pgid`."""
    return [p for p in live_processes() if p.pgid == pgid]


def children(pid: int) -> list[Proc]:
    """The live processes whose parent is `pid`."""
    return [p for p in live_processes() if p.ppid == pid]


def descendants(pid: int) -> list[Proc]:
    """The live processes below `pid` (children, their children, ...), whatever session or group they are in."""
    procs = live_processes()
    below, frontier = [], {pid}
    while frontier:
        found = [p for p in procs if p.ppid in frontier]
        below += found
        frontier = {p.pid for p in found}
    return below


def kill_tree(pid: int, timeout_s: float = 30.0) -> list[int]:
    """SIGKILL `pid` and every process below it, wait until none of them is alive; returns those still alive.

    A process group is not enough where a child starts its own session: torchrun does so for its workers,
    so `os.killpg(torchrun)` leaves the ranks running, holding the run folder's lock.
    """
    targets = [pid, *(p.pid for p in descendants(pid))]
    for target in targets:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    live = {p.pid for p in live_processes()}
    while any(t in live for t in targets[1:]) and time.monotonic() < deadline:
        time.sleep(0.05)
        live = {p.pid for p in live_processes()}
    return [t for t in targets[1:] if t in live]
