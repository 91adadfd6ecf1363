"""Sharded checkpoints with torch.distributed.checkpoint (DCP): atomic saves, keep policy, safe resume.

On-disk layout of `ckpt_dir`:

    <iteration>/              one complete checkpoint (folder name = iteration, no padding)
        .metadata             DCP metadata (written by rank 0)
        __<r>_0.distcp        DCP data written by rank r (sharded tensors, deduplicated replicated ones)
        rank<r>.pt            per-rank states of rank r (`rank_states`, e.g. RNG), `torch.save` of a dict
        COMPLETE.json         marker written last: iteration, world size, time, every file, its size and
                              its CRC-32 (each rank checksums the files it wrote)
    .tmp-<iteration>/         a save in progress (or a crashed one): never loaded, removed by the next save
    .trash-<iteration>-<ns>/  a checkpoint being deleted (renamed first so that it vanishes atomically)
    best.json                 the best checkpoint on validation (`mark_best`): its iteration, metric and score;
                              the keep policy never deletes that checkpoint

A save writes into `.tmp-<iteration>/`, waits for every rank, then rank 0 writes the marker and renames
the folder to `<iteration>/`: a crash at any point leaves the previous checkpoints intact. A new best is
marked after its checkpoint is committed, by replacing `best.json` atomically, and the previous best is
deleted only after that: a crash at any point leaves a `best.json` that names a complete checkpoint. A folder is
*complete* when its marker exists and every file it lists has the listed size (`invalid_reason`, cheap);
its contents are *intact* when every file has the recorded CRC-32 (`damaged_files`, read once per load,
the files shared out over the ranks, and by the conversion). A failed save (disk full, a rank's error)
raises a `CheckpointError` on every rank and leaves nothing but the previous checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.tensor import DTensor

from dinov3_us.distributed import all_gather_object, get_rank, get_world_size, is_enabled
from dinov3_us.errors import CheckpointError, ConfigError
from dinov3_us.fileio import fsync_dir, fsync_file, write_atomic
from dinov3_us.fsdp import local_shard

logger = logging.getLogger("dinov3_us")

MARKER = "COMPLETE.json"
BEST = "best.json"
CHECKSUM = "crc32"  # COMPLETE.json key: {file name: 8 hex digits}
_CHUNK = 16 << 20
TMP_PREFIX, TRASH_PREFIX = ".tmp-", ".trash-"
_MAX_LISTED = 20


def _listing(keys: set[str]) -> str:
    shown = sorted(keys)[:_MAX_LISTED]
    more = f" ... and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return ", ".join(shown) + more


def file_crc32(path: Path) -> str:
    """CRC-32 of a file's contents as 8 hex digits (zlib): a damage detector, not a signature.

    Its speed: see bench/bench_checkpoint_checksum.py -> bench/results/checkpoint_checksum.json.
    """
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def damaged_files(path: Path, names: list[str] | None = None) -> list[str]:
    """The files of checkpoint `path` (all listed ones, or `names`) whose CRC-32 differs from COMPLETE.json's.

    A checkpoint written before checksums were recorded has none to compare: [] (sizes are still checked
    by `invalid_reason`).
    """
    recorded = json.loads((path / MARKER).read_text()).get(CHECKSUM, {})
    return [name for name in (sorted(recorded) if names is None else names)
            if name in recorded and file_crc32(path / name) != recorded[name]]


def invalid_reason(path: Path) -> str | None:
    """Why the checkpoint folder `path` is not complete, or None when it is."""
    marker = path / MARKER
    if not marker.is_file():
        return f"no {MARKER} marker (the save did not finish)"
    try:
        info = json.loads(marker.read_text())
        files = dict(info["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {MARKER}: {e}"
    if path.name.isdigit() and info.get("iteration") != int(path.name):
        return f"{MARKER} names iteration {info.get('iteration')!r}, the folder {path.name}"
    for name, size in sorted(files.items()):
        try:
            actual = (path / name).stat().st_size
        except OSError:
            return f"file {name} listed in {MARKER} is missing"
        if actual != size:
            return f"file {name} has {actual} bytes, {MARKER} says {size}"
    return None


def _written_by(name: str, rank: int) -> bool:
    """Whether rank `rank` wrote checkpoint file `name` (DCP's `__<rank>_<i>.distcp`, our `rank<r>.pt`)."""
    return name.startswith(f"__{rank}_") or name == f"rank{rank}.pt"


def _short_error(e: BaseException) -> str:
    """One line for an exception; for DCP's CheckpointException, the first failing rank's own exception."""
    if isinstance(e, CheckpointException) and e.failures:
        rank, (inner, _) = next(iter(sorted(e.failures.items(), key=lambda kv: kv[0])))
        return f"{_short_error(inner)} (rank {rank})"
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" + ("..." if len(text) > 300 else "")


def _no_space(e: BaseException) -> bool:
    """Whether a failed write ran out of space (ENOSPC, EDQUOT), also inside DCP's CheckpointException."""
    if isinstance(e, CheckpointException) and e.failures:
        return any(_no_space(inner) for inner, _ in e.failures.values())
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def checkpoint_folders(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(iteration, folder) of every `ckpt_dir/<iteration>` folder, complete or not, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted((int(p.name), p) for p in ckpt_dir.iterdir() if p.name.isdigit() and p.is_dir())


def complete_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of `ckpt_dir`, newest first; incomplete ones are skipped with a WARNING naming why."""
    complete = []
    for _, path in reversed(checkpoint_folders(Path(ckpt_dir))):
        reason = invalid_reason(path)
        if reason is None:
            complete.append(path)
        else:
            logger.warning("Skipping checkpoint %s: %s", path, reason)
    return complete


def best_checkpoint(ckpt_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """(the folder, the record) of the best checkpoint that `best.json` names, or None (none marked, or not
    complete: a WARNING says why)."""
    path = Path(ckpt_dir) / BEST
    try:
        record = json.loads(path.read_text())
        folder = Path(ckpt_dir) / str(int(record["iteration"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("Ignoring %s: %s", path, e)
        return None
    reason = invalid_reason(folder)
    if reason is not None:
        logger.warning("%s names checkpoint %s, which is not usable: %s", path, folder, reason)
        return None
    return folder, record


class NoUsableCheckpointError(CheckpointError):
    """Checkpoints exist but none can be loaded: resuming would silently start over."""


class CheckpointManager:
    """Saves and loads `dict[str, Stateful]` under `ckpt_dir`; see the module docstring for the layout.

    Every rank of `process_group` (default: the default group, or a single process when torch.distributed
    is not initialised) must call `save` and `load` together. `ckpt_dir` must be one shared folder.
    `before_commit(tmp_path)`, when set, runs on every rank after its data are written and before the
    commit (tests use it to crash in the middle of a save).
    """

    def __init__(self, ckpt_dir: str | os.PathLike, *, period: int, max_to_keep: int, keep_every: int,
                 process_group: dist.ProcessGroup | None = None):
        for key, value, low in (("period", period, 1), ("max_to_keep", max_to_keep, 1), ("keep_every", keep_every, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"checkpointing.{key}: expected an integer >= {low}, got {value!r}")
        self.ckpt_dir = Path(ckpt_dir)
        self.period, self.max_to_keep, self.keep_every = period, max_to_keep, keep_every
        self.process_group = process_group
        self.before_commit: Callable[[Path], None] | None = None
        self._warned_space = False  # the short-of-space warning is given once per manager

    # -- distributed helpers ------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        """Whether torch.distributed is initialised (else a single process)."""
        return is_enabled()

    @property
    def rank(self) -> int:
        """Rank within the process group (0 for a single process)."""
        return get_rank(self.process_group)

    @property
    def world_size(self) -> int:
        """Size of the process group (1 for a single process)."""
        return get_world_size(self.process_group)

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.process_group)

    def _gather(self, obj: Any) -> list[Any]:
        return all_gather_object(obj, self.process_group)

    @contextlib.contextmanager
    def _quiet(self):
        """Silence DCP's warning that a single process is a single process."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            yield

    # -- listing ------------------------------------------------------------------------------------
    def should_save(self, iteration: int) -> bool:
        """True every `period` iterations (never at iteration 0)."""
        return iteration > 0 and iteration % self.period == 0

    def _folders(self) -> list[tuple[int, Path]]:
        return checkpoint_folders(self.ckpt_dir)

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, newest first; incomplete ones are skipped with a WARNING naming the reason."""
        return complete_checkpoints(self.ckpt_dir)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None (incomplete ones are skipped with a WARNING)."""
        complete = self.complete_checkpoints()
        return complete[0] if complete else None

    # -- save -----------------------------------------------------------------------------------------
    def save(self, iteration: int, states: dict[str, Any], *, rank_states: dict[str, Any] | None = None) -> Path:
        """Save `states` (DCP, resharded on load) and `rank_states` (one file per rank) as `<iteration>/`.

        Returns the path of the committed checkpoint. Then applies the keep policy (rank 0).
        """
        _check_names(states)
        rank, final = self.rank, self.ckpt_dir / str(iteration)
        tmp = self.ckpt_dir / f"{TMP_PREFIX}{iteration}"
        start = time.monotonic()
        if rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
            tmp.mkdir()
        state_dicts = {name: st.state_dict() for name, st in states.items()}
        needed = self._space_needed(state_dicts)  # also the barrier after tmp's creation
        free = shutil.disk_usage(self.ckpt_dir).free
        if free < needed and not self._warned_space and rank == 0:
            self._warned_space = True
            logger.warning("%s has %s free, less than a checkpoint needs (about %s): the next save may fail; "
                           "free space there or lower checkpointing.max_to_keep", self.ckpt_dir, _mib(free),
                           _mib(needed))
        local = {name: st.state_dict() for name, st in (rank_states or {}).items()}  # before any write
        planner = DefaultSavePlanner(dedup_save_to_lowest_rank=True)  # global values: rank 0's copy
        error, checksums = None, {}
        try:
            with self._quiet():
                dcp.save(state_dicts, storage_writer=dcp.FileSystemWriter(tmp), planner=planner,
                         process_group=self.process_group, no_dist=not self.distributed)
            if rank_states is not None:
                torch.save(local, tmp / f"rank{rank}.pt")
                fsync_file(tmp / f"rank{rank}.pt")
            checksums = {p.name: file_crc32(p) for p in sorted(tmp.iterdir()) if _written_by(p.name, rank)}
        except (OSError, CheckpointException) as e:  # disk full, quota, a rank's failed write
            error = (_short_error(e), _no_space(e))
        if self.before_commit is not None:
            self.before_commit(tmp)
        gathered = self._gather((error, checksums))  # also a barrier
        errors = [(r, err) for r, (err, _) in enumerate(gathered) if err is not None]
        if errors:
            left = shutil.disk_usage(self.ckpt_dir).free
            if rank == 0:
                self._delete(tmp)
            r, (message, no_space) = errors[0]
            latest = self.latest()
            kept = f"the latest checkpoint is {latest}" if latest else "there is no earlier checkpoint"
            if no_space or free < needed:  # a full disk often shows as torch.save's "unexpected pos"
                raise CheckpointError(
                    f"saving checkpoint {final} failed: no space left in {self.ckpt_dir} (a checkpoint needs about "
                    f"{_mib(needed)}, {_mib(free)} was free when the save began, {_mib(left)} at the failure; rank "
                    f"{r}: {message}); nothing committed; {kept}. Free space "
                    "there (or lower checkpointing.max_to_keep) and run the same command again to resume")
            raise CheckpointError(f"saving checkpoint {final} failed on rank {r}: {message} ({_mib(left)} free in "
                                  f"{self.ckpt_dir}; nothing committed; {kept})")
        if rank == 0:
            merged = {name: crc for _, sums in gathered for name, crc in sums.items()}
            self._commit(tmp, final, iteration, sorted(states), sorted(rank_states or {}), merged)
        self._barrier()
        if rank == 0:
            self._apply_keep_policy()
        logger.info("Saved checkpoint %s (%.1f s)", final, time.monotonic() - start)
        return final

    def _space_needed(self, state_dicts: dict[str, Any]) -> int:
        """Bytes a checkpoint takes: the newest complete one's files, else the tensors of `state_dicts` (collective).

        The estimate counts each rank's shards of sharded (DTensor) values and rank 0's copy of the
        others, as the save writes them.
        """
        tensors = [v for v in flatten_state_dict(state_dicts)[0].values() if isinstance(v, torch.Tensor)]
        mine = sum(local_shard(t).numel() * t.element_size() for t in tensors
                   if isinstance(t, DTensor) or self.rank == 0)
        estimate = sum(self._gather(mine))
        for _, path in reversed(self._folders()):
            if invalid_reason(path) is None:
                return sum(json.loads((path / MARKER).read_text())["files"].values())
        return estimate

    def _commit(self, tmp: Path, final: Path, iteration: int, names: list[str], rank_names: list[str],
                checksums: dict[str, str]) -> None:
        files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        checksums = {name: checksums.get(name) or file_crc32(tmp / name) for name in files}  # + unclaimed files
        info = {"iteration": iteration, "world_size": self.world_size, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "states": names, "rank_states": rank_names, "torch": torch.__version__, "files": files,
                CHECKSUM: checksums}
        write_atomic(tmp / MARKER, json.dumps(info, indent=1))  # fsyncs the marker and the folder
        trash = None
        if final.exists():
            logger.warning("Overwriting checkpoint %s", final)
            trash = self.ckpt_dir / f"{TRASH_PREFIX}{iteration}-{time.time_ns()}"
            os.replace(final, trash)
        os.replace(tmp, final)
        fsync_dir(self.ckpt_dir)
        if trash is not None:
            self._delete(trash)

    def _delete(self, path: Path) -> None:
        try:
            if not path.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                trash = self.ckpt_dir / f"{TRASH_PREFIX}{path.name}-{time.time_ns()}"
                os.replace(path, trash)  # vanishes atomically, then is deleted
                path = trash
            shutil.rmtree(path)
        except OSError as e:
            logger.warning("Could not delete %s: %s", path, e)

    def _remove_leftovers(self) -> None:
        for path in sorted(self.ckpt_dir.iterdir()):
            if path.is_dir() and path.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                logger.warning("Removing half-written checkpoint %s", path)
                self._delete(path)

    def mark_best(self, iteration: int, record: dict) -> None:
        """Name the committed checkpoint `iteration` the best (`best.json`, with `record`: metric, score, ...),
        then delete the previous best if the keep policy no longer keeps it (collective)."""
        if self.rank == 0:
            if invalid_reason(self.ckpt_dir / str(iteration)) is not None:
                raise CheckpointError(f"cannot mark checkpoint {iteration} as the best: it is not complete")
            write_atomic(self.ckpt_dir / BEST, json.dumps({"iteration": iteration, **record}, indent=1) + "\n")
            self._apply_keep_policy()
        self._barrier()

    def best(self) -> tuple[Path, dict] | None:
        """(folder, record) of the best checkpoint, or None (see `best_checkpoint`)."""
        return best_checkpoint(self.ckpt_dir)

    def _apply_keep_policy(self) -> None:
        folders = self._folders()
        keep = {it for it, _ in folders[-self.max_to_keep :]}
        keep |= {it for it, _ in folders if self.keep_every and it % self.keep_every == 0}
        try:
            keep.add(int(json.loads((self.ckpt_dir / BEST).read_text())["iteration"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no best marked
        for it, path in folders:
            if it not in keep:
                logger.info("Deleting old checkpoint %s", path)
                self._delete(path)

    # -- load -----------------------------------------------------------------------------------------
    def load(self, states: dict[str, Any], path: str | os.PathLike | None = None, *,
             rank_states: dict[str, Any] | None = None) -> int | None:
        """Load the newest complete checkpoint (or `path`) into `states` and `rank_states`.

        Returns its iteration, or None when there is no checkpoint. When the newest fails to load (a
        damaged file), warns and falls back to the previous one; with an explicit `path` it raises.

        Raises:
            CheckpointError: keys do not match `states` (missing/unexpected: a different model, never
                a fallback), `path` is incomplete, damaged or unloadable.
            NoUsableCheckpointError: checkpoint folders exist but none is complete, intact and loadable
                (a caller that means to start over calls `set_aside()`).
        """
        _check_names(states)
        if path is not None:
            candidates = [Path(path)]
            reason = invalid_reason(candidates[0])
            if reason is not None:
                raise CheckpointError(f"checkpoint {path}: {reason}")
        else:
            candidates = self.complete_checkpoints()
            folders = self._folders()
            if folders and not candidates:
                reasons = "; ".join(f"{p.name}: {invalid_reason(p)}" for _, p in folders[-3:])
                raise NoUsableCheckpointError(f"{self.ckpt_dir} holds {len(folders)} checkpoint folder(s) and none is "
                                              f"complete ({reasons})")
        if not candidates:
            logger.info("No checkpoint in %s: starting from scratch", self.ckpt_dir)
            return None
        failures = []
        for ckpt in candidates:
            damaged = self._damaged(ckpt)
            if damaged:
                message = (f"checkpoint {ckpt} is damaged: {', '.join(damaged[:5])} do not match the CRC-32 "
                           f"recorded in its {MARKER}")
                if path is not None:
                    raise CheckpointError(message)
                failures.append(message)
                logger.warning("%s; falling back to the previous checkpoint", message)
                continue
            error = None
            try:
                loaded = self._read(ckpt, states, rank_states)
            except CheckpointError:
                raise
            except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP/unpickling/IO: a damaged file
                error = f"{type(e).__name__}: {e}"
            errors = [(r, err) for r, err in enumerate(self._gather(error)) if err is not None]
            if not errors:
                iteration, targets, local = loaded
                for name, st in states.items():
                    st.load_state_dict(targets[name])
                for name, st in (rank_states or {}).items():
                    if local is not None:
                        st.load_state_dict(local[name])
                logger.info("Resuming from %s at iteration %d", ckpt, iteration)
                return iteration
            message = f"checkpoint {ckpt} could not be loaded (rank {errors[0][0]}: {errors[0][1]})"
            if path is not None:
                raise CheckpointError(message)
            failures.append(message)
            logger.warning("%s; falling back to the previous checkpoint", message)
        raise NoUsableCheckpointError(f"no checkpoint in {self.ckpt_dir} could be loaded: " + "; ".join(failures))

    def set_aside(self) -> Path | None:
        """Move every checkpoint folder into `ckpt_dir/unusable-<time>/` (kept, never loaded); collective.

        For a run told to start over although its checkpoints cannot be used: nothing is deleted.
        """
        target = None
        if self.rank == 0 and self._folders():
            target = self.ckpt_dir / time.strftime("unusable-%Y%m%d-%H%M%S")
            target.mkdir()
            for _, path in self._folders():
                os.replace(path, target / path.name)
            fsync_dir(self.ckpt_dir)
            logger.warning("Moved the unusable checkpoints of %s to %s; starting from scratch", self.ckpt_dir, target)
        self._barrier()
        return target

    def _damaged(self, ckpt: Path) -> list[str]:
        """Files of `ckpt` whose contents do not match their CRC-32 (collective: each rank checks a share)."""
        names = sorted(json.loads((ckpt / MARKER).read_text()).get(CHECKSUM, {}))
        return sorted(n for share in self._gather(damaged_files(ckpt, names[self.rank :: self.world_size]))
                      for n in share)

    def _read(self, ckpt: Path, states: dict[str, Any], rank_states: dict[str, Any] | None):
        """Check keys, then read `ckpt` into load targets (tensors in place); returns (iteration, targets, local)."""
        info = json.loads((ckpt / MARKER).read_text())
        ckpt_keys = set(dcp.FileSystemReader(ckpt).read_metadata().state_dict_metadata)
        targets = {}
        for name, st in states.items():
            own = {k[len(name) + 1 :] for k in ckpt_keys if k.startswith(name + ".")}
            targets[name] = st.load_target(own) if hasattr(st, "load_target") else st.state_dict()
        flat, mapping = flatten_state_dict(targets)
        missing, unexpected = set(flat) - ckpt_keys, ckpt_keys - set(flat)
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {ckpt} does not match the states {sorted(states)}: "
                                  f"missing keys [{_listing(missing)}]; unexpected keys [{_listing(unexpected)}]")
        with self._quiet():
            dcp.load(flat, storage_reader=dcp.FileSystemReader(ckpt), process_group=self.process_group,
                     no_dist=not self.distributed)
        for key, value in flat.items():  # DCP replaces non-tensor values in `flat`; tensors were filled in place
            set_element(targets, mapping[key], value)
        return int(info["iteration"]), targets, self._read_rank_states(ckpt, info, rank_states)

    def _read_rank_states(self, ckpt: Path, info: dict, rank_states: dict[str, Any] | None) -> dict | None:
        if not rank_states:
            return None
        saved_world, file = int(info["world_size"]), ckpt / f"rank{self.rank}.pt"
        if self.rank == 0 and saved_world > self.world_size:
            logger.warning("Checkpoint %s was written by %d processes, loading with %d: the per-rank states %s "
                           "of ranks %d..%d are dropped", ckpt, saved_world, self.world_size, sorted(rank_states),
                           self.world_size, saved_world - 1)
        if not file.is_file():
            logger.warning("Checkpoint %s has no per-rank state for rank %d (written by %d processes): %s left "
                           "as they are", ckpt, self.rank, saved_world, sorted(rank_states))
            return None
        local = torch.load(file, map_location="cpu", weights_only=False)  # the run's own file
        if set(local) != set(rank_states):
            raise CheckpointError(f"{file}: per-rank states {sorted(local)} do not match {sorted(rank_states)}")
        return local


def _check_names(states: dict[str, Any]) -> None:
    for name in states:
        if not name or "." in name:
            raise ValueError(f"state names must be non-empty and contain no '.', got {name!r}")
