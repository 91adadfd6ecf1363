"""Exactly-once and exact resume of the shard stream under real torch.distributed: 2 ranks x 2 workers.

Each rank is a real process (`python this_file.py MODE RANK ...`, gloo over a file store) whose
DataLoader has 2 worker processes; the data are real tar shards written in tmp_path. Modes:
- `reference`: epochs 0 and 1 without interruption, then a second loader that consumes 3 batches of
  epoch 0 (workers prefetch beyond them) and saves its state to disk;
- `resume`: fresh processes load that state with another worker count and batch size, finish epoch 0;
- `train`: a toy training loop that checkpoints every step (state + keys trained so far; a step is
  committed once both ranks saved it); the test SIGKILLs it mid-epoch and starts it again.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # 2 processes in subprocesses, killed and resumed

SIZES = [9, 6, 11, 7, 8, 10, 12]  # 63 samples: 31 per rank, 1 dropped per epoch
BATCH, SEED = 4, 7


def keys_collate(samples):
    """Collate to the list of sample keys."""
    return [meta["__key__"] for _, meta in samples]


def write_dataset(root: Path) -> list[str]:
    """Real tar shards + manifest under `root`; returns every key."""
    from PIL import Image

    from dinov3_us.data.shards import write_shard

    root.mkdir(parents=True, exist_ok=True)
    keys, entries = [], []
    for s, n in enumerate(SIZES):
        samples = []
        for _ in range(n):
            key = f"us_{len(keys):04d}"
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8), len(keys), np.uint8)).save(buf, "PNG")
            samples.append((key, {"png": buf.getvalue(), "json": json.dumps({"label": "x"}).encode()}))
            keys.append(key)
        write_shard(root / f"train-{s:06d}.tar", samples)
        entries.append({"url": f"train-{s:06d}.tar", "n": n})
    manifest = {"source": "test", "task": "t", "counts": {"train": {"x": len(keys)}}, "shards": {"train": entries}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return keys


def _save(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _rank_main(mode: str, rank: int, store: str, data: str, out: str) -> None:
    import torch.distributed as dist

    from dinov3_us.data.loader import make_data_loader

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    out_dir = Path(out)

    def loader(workers=2, batch=BATCH):
        return make_data_loader(data, batch_size=batch, num_workers=workers, seed=SEED, window_shards=3,
                                collate_fn=keys_collate)

    if mode == "reference":
        ld = loader()
        epochs = [list(ld), list(ld)]
        partial, it = loader(), None
        it, consumed = iter(partial), []
        for _ in range(3):
            consumed.append(next(it))
        time.sleep(0.3)  # let the workers prefetch well beyond the consumed batches
        state = partial.state_dict()
        _save(out_dir / f"reference_{rank}.json", {"epochs": epochs, "len": len(ld), "dropped": ld.dropped_per_epoch,
                                                   "partial": consumed, "state": state})
    elif mode == "resume":
        ld = loader(workers=1, batch=5)
        ld.load_state_dict(json.loads((out_dir / f"reference_{rank}.json").read_text())["state"])
        _save(out_dir / f"resume_{rank}.json", {"batches": list(ld), "epoch_after": ld.epoch})
    elif mode == "train":
        ld, trained, step = loader(), [], 0
        latest = out_dir / "latest.json"
        if latest.exists():
            step = json.loads(latest.read_text())["step"]
            ckpt = json.loads((out_dir / f"ckpt_{rank}_{step}.json").read_text())
            ld.load_state_dict(ckpt["data"])
            trained = ckpt["trained"]
        resumed_at = len(trained)
        for batch in ld:
            time.sleep(0.2)  # the "training step"
            trained.append(batch)
            step += 1
            _save(out_dir / f"ckpt_{rank}_{step}.json", {"data": ld.state_dict(), "trained": trained})
            dist.barrier()
            if rank == 0:
                _save(latest, {"step": step})
            dist.barrier()
        _save(out_dir / f"done_{rank}.json", {"trained": trained, "resumed_at": resumed_at})
    dist.barrier()
    dist.destroy_process_group()


def _launch(tmp_path: Path, mode: str, data: Path, out: Path) -> list[subprocess.Popen]:
    store = tmp_path / f"store_{mode}_{time.monotonic_ns()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, __file__, mode, "{rank}", str(store), str(data), str(out)]
    return [subprocess.Popen([c.format(rank=r) for c in cmd], env=env, start_new_session=True) for r in range(2)]


def _wait(procs, timeout=120) -> None:
    for p in procs:
        assert p.wait(timeout=timeout) == 0, f"rank process exited with {p.returncode}"


def _flat(batches):
    return [k for b in batches for k in b]


def test_exactly_once_resume_and_kill(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    keys = write_dataset(data)
    procs = []
    try:
        _check(tmp_path, data, out, keys, procs)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _check(tmp_path, data, out, keys, procs):
    train = _launch(tmp_path, "train", data, out)
    reference = _launch(tmp_path, "reference", data, out)  # beside the training run, to save time
    procs += train + reference

    # SIGKILL the training run mid-epoch once step 3 is committed (the restart is checked below)
    deadline = time.monotonic() + 90
    while not (out / "latest.json").exists() or json.loads((out / "latest.json").read_text())["step"] < 3:
        assert time.monotonic() < deadline and all(p.poll() is None for p in train), "training run ended early"
        time.sleep(0.02)
    for p in train:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert not any((out / f"done_{r}.json").exists() for r in range(2))
    _wait(reference)
    restart = _launch(tmp_path, "train", data, out)
    resume = _launch(tmp_path, "resume", data, out)
    procs += restart + resume
    ref = [json.loads((out / f"reference_{r}.json").read_text()) for r in range(2)]

    # (a) exactly once: every rank the same number of batches; no key twice; all but `dropped` keys covered
    for e in range(2):
        per_rank = [_flat(ref[r]["epochs"][e]) for r in range(2)]
        assert [len(ref[r]["epochs"][e]) for r in range(2)] == [ref[0]["len"]] * 2 == [8, 8]
        union = per_rank[0] + per_rank[1]
        assert len(union) == len(set(union)) == len(keys) - ref[0]["dropped"] == 62
        assert set(union) <= set(keys)
    # (c) the next epoch is another order
    assert _flat(ref[0]["epochs"][0]) != _flat(ref[0]["epochs"][1])

    # (b) resume in new processes (1 worker, batch 5) after 3 consumed batches, despite prefetching
    assert all(r["state"]["position"] == 3 * BATCH and r["state"]["epoch"] == 0 for r in ref)
    _wait(resume)
    for r in range(2):
        res = json.loads((out / f"resume_{r}.json").read_text())
        assert _flat(ref[r]["partial"]) + _flat(res["batches"]) == _flat(ref[r]["epochs"][0])
        assert res["epoch_after"] == 1

    # the killed run, restarted from its last committed checkpoint: every key exactly once
    _wait(restart)
    trained = []
    for r in range(2):
        done = json.loads((out / f"done_{r}.json").read_text())
        assert 3 <= done["resumed_at"] < ref[r]["len"]  # resumed mid-epoch
        assert done["trained"] == ref[r]["epochs"][0]  # same batches as the uninterrupted run
        trained += _flat(done["trained"])
    assert len(trained) == len(set(trained)) == 62


if __name__ == "__main__":
    _rank_main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:6])
