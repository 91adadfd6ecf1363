"""How the ranks of one job find each other, on a port that no other process can take from them.

`dinov3_us.distributed.init_distributed` picks the first way that applies:

1. `MASTER_PORT` is set: torchrun set it (its agent already listens there), or the user chose it.
   torch's env:// rendezvous, as is. An explicit port that another process holds is one line naming it.
2. One process: an in-memory store, no port at all.
3. Several processes that SLURM (srun, a submitit job) or the local launcher started, without
   `MASTER_PORT`: rank 0 opens the TCP store on a port the kernel gives it (the bind chooses the port,
   so nothing can take it in between) and publishes `address:port` in the job's rendezvous folder,
   `<run folder>/.rendezvous/<job key>/rank0.json`; the other ranks read it and connect. The run
   folder is shared by every rank of a multi-node run already (the checkpoints are written there).
   Where a caller gives no folder, the port is fixed: derived from the job id, outside the kernel's
   ephemeral port range (`fixed_port`), which outgoing connections of any process draw from.

No rank waits long for a dead sibling. A rank that fails during the rendezvous writes `rank<k>.failed`
(the reason, one line) before it raises; the others see it within a poll and stop, naming that rank
and its reason. A rank that never arrives (killed before it could write anything) stops the others
after `start_timeout_s`. The launchers' supervisors end the siblings of a task that dies at any time
within seconds: the local controller (`dinov3_us/launch/local_controller.py`) and `srun --kill-on-bad-exit`
(torchrun's agent does the same for its workers).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path

import torch.distributed as dist

from dinov3_us.errors import DinoUSError
from dinov3_us.fileio import write_json_atomic

FOLDER = ".rendezvous"
POLL_S = 0.5  # how often a waiting rank looks at the store and the folder (a shared file system's metadata)
CONNECT_TRY_S = 5.0  # one attempt to connect to a published port; a stale file's port is refused or silent
NONCE_KEY, JOINED_KEY = "dinov3_us/nonce", "dinov3_us/joined"
DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default net.ipv4.ip_local_port_range


class RendezvousError(DinoUSError, RuntimeError):
    """The ranks could not form the process group: a sibling failed or never came, or a port was taken."""


def job_key(env: dict | None = None) -> str | None:
    """A name for this start of this job, the same on all of its ranks (None outside SLURM and the local launcher).

    Local launcher: its job id (the controller's pid) and attempt; SLURM: job, step and restart count,
    so that a requeued job or a second `srun` in one allocation never reads an earlier start's file.
    """
    env = os.environ if env is None else env
    if env.get("SUBMITIT_EXECUTOR") == "local" and env.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"local-{env['SUBMITIT_LOCAL_JOB_ID']}-{env.get('DINOV3_US_LOCAL_ATTEMPT', '0')}"
    if env.get("SLURM_JOB_ID"):
        return (f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
                f"-{env.get('SLURM_RESTART_COUNT', '0') or '0'}")
    return None


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (`net.ipv4.ip_local_port_range`)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL


def fixed_port(job_id: int) -> int:
    """A port for `job_id` in the widest span of [10000, 65535] outside the ephemeral range (where one is needed)."""
    low, high = ephemeral_range()
    spans = [(a, b) for a, b in ((10000, low - 1), (high + 1, 65535)) if b >= a] or [(10000, 65535)]
    a, b = max(spans, key=lambda s: s[1] - s[0])
    return a + job_id % (b - a + 1)


def port_taken_message(port: int | str, err: Exception) -> str | None:
    """One line for a bind that failed because `port` is held by another process (None for other errors)."""
    if "EADDRINUSE" not in str(err) and "Address already in use" not in str(err):
        return None
    return (f"MASTER_PORT={port} is already in use on {socket.gethostname()}: choose another port, or unset "
            "MASTER_PORT and the ranks rendezvous on a port of the kernel's choosing")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:400]}" if text else type(err).__name__


class FileRendezvous:
    """Rank 0 hosts a TCP store on a kernel-chosen port and publishes it in `folder`; the others join it.

    `store()` returns the connected store once every rank has joined; `close()` (rank 0) removes the
    folder after the process group has formed. Raises `RendezvousError` naming the failed or missing rank.
    """

    def __init__(self, folder: Path, rank: int, world_size: int, address: str, timeout_s: float):
        self.folder, self.rank, self.world_size = Path(folder), rank, world_size
        self.address, self.timeout_s = address, timeout_s
        self.deadline = time.monotonic() + timeout_s

    @property
    def published(self) -> Path:
        """Rank 0's address, port and nonce (JSON)."""
        return self.folder / "rank0.json"

    def store(self) -> dist.Store:
        """The joined store (every rank is connected when it returns)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            store = self._host() if self.rank == 0 else self._join()
        except RendezvousError as err:
            if not getattr(err, "from_sibling", False):
                self._mark_failed(str(err))
            raise
        except Exception as err:  # noqa: BLE001 - any failure here must reach the siblings, then the user
            self._mark_failed(_one_line(err))
            raise RendezvousError(f"rank {self.rank} could not join the process group: {_one_line(err)}") from err
        store.set_timeout(datetime.timedelta(seconds=max(self.deadline - time.monotonic(), 1.0)))
        return store

    def close(self) -> None:
        """Rank 0, once the group has formed: remove the folder (and `.rendezvous` when it is empty)."""
        if self.rank != 0:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()
        except OSError:
            pass

    # -- the two sides --------------------------------------------------------------------------------
    def _host(self) -> dist.Store:
        store = dist.TCPStore(self.address, 0, self.world_size, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=self.timeout_s))
        nonce = secrets.token_hex(8)
        store.set(NONCE_KEY, nonce)
        write_json_atomic(self.published, {"address": self.address, "port": store.port, "nonce": nonce,
                                           "host": socket.gethostname(), "pid": os.getpid()})
        while int(store.add(JOINED_KEY, 0)) < self.world_size - 1:
            self._check_siblings()
            if time.monotonic() > self.deadline:
                missing = [r for r in range(1, self.world_size) if not store.check([f"dinov3_us/rank{r}"])]
                raise RendezvousError(
                    f"rank(s) {_ranks(missing)} did not join the process group within {self.timeout_s:.0f} s "
                    "(runtime.start_timeout_s): they died or never started; see their logs")
            time.sleep(POLL_S)
        return store

    def _join(self) -> dist.Store:
        while True:
            self._check_siblings()
            store = self._connect()
            if store is not None:
                store.set(f"dinov3_us/rank{self.rank}", socket.gethostname())
                store.add(JOINED_KEY, 1)
                return store
            if time.monotonic() > self.deadline:
                where = f"{self.published}" if not self.published.exists() else f"the port in {self.published}"
                raise RendezvousError(
                    f"rank 0 did not open the rendezvous within {self.timeout_s:.0f} s (runtime.start_timeout_s; "
                    f"nothing reachable at {where}): it died or never started; see its log")
            time.sleep(POLL_S)

    def _connect(self) -> dist.Store | None:
        """A store connected to rank 0's published port, or None (not published yet, or a stale file)."""
        try:
            info = json.loads(self.published.read_text())
        except (OSError, ValueError):
            return None
        try:
            store = dist.TCPStore(info["address"], int(info["port"]), self.world_size, is_master=False,
                                  timeout=datetime.timedelta(seconds=CONNECT_TRY_S))
            if store.get(NONCE_KEY).decode() == info["nonce"]:
                return store
        except (RuntimeError, KeyError, ValueError):  # refused, silent, or another store on a reused port
            pass
        return None

    # -- failures -------------------------------------------------------------------------------------
    def _mark_failed(self, reason: str) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"rank{self.rank}.failed").write_text(f"{socket.gethostname()}: {reason}\n")
        except OSError:
            pass  # the folder is gone or not writable: the siblings fall back on the time limit

    def _check_siblings(self) -> None:
        try:
            names = sorted(p.name for p in self.folder.iterdir() if p.name.endswith(".failed"))
        except OSError:
            return
        for name in names:
            rank = int(re.sub(r"\D", "", name) or -1)
            if rank == self.rank:
                continue
            try:
                reason = (self.folder / name).read_text().strip()
            except OSError:
                reason = "(its reason could not be read)"
            err = RendezvousError(f"rank {rank} failed before the process group formed ({reason}); stopping")
            err.from_sibling = True
            raise err


def _ranks(ranks: list[int]) -> str:
    shown = ", ".join(map(str, ranks[:8]))
    return shown + (f" ... ({len(ranks)} ranks)" if len(ranks) > 8 else "")
