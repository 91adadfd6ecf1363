"""CheckpointManager with 2 real processes (gloo, CPU, FSDP2 `fully_shard` per block + root), no mocks.

One test, one launch of 2 rank processes (`python this_file.py RANK STORE ROOT`), in phases:
1. 1 -> 2: a checkpoint written by the pytest process (plain model) loads into the sharded model;
2. 2 -> 2: train, save at 2 and 3 (RNG per rank), load 3 into a fresh sharded model: same local
   shards, optimizer state and RNG draws;
3. crash: start saving 4 with a `before_commit` hook that signals and sleeps; the test SIGKILLs both
   ranks there (DCP data and `.metadata` are written, the marker is not);
then the pytest process checks that 3 is still the latest complete checkpoint and loads it into one
plain process (2 -> 1) with the full tensors of phase 2, and that the next save removes `.tmp-4`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

FULL = StateDictOptions(full_state_dict=True, flatten_optimizer_state_dict=True)
SHARDED = StateDictOptions(flatten_optimizer_state_dict=True)
pytestmark = pytest.mark.slow  # 2 processes in subprocesses, killed and restarted


class Tiny(nn.Module):
    """Blocks to shard, a 1-row `mask_token` (one rank holds an empty shard) that never gets a gradient."""

    def __init__(self):
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(1, 8))
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
        self.head = nn.Linear(8, 6)
        self.register_buffer("center", torch.arange(6.0))

    def forward(self, x):
        for b in self.blocks:
            x = torch.relu(b(x))
        return self.head(x)


def make(seed: int, mesh=None):
    torch.manual_seed(seed)
    model = Tiny()
    if mesh is not None:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)


def train_step(model, opt, seed: int) -> None:
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    opt.step()


def full(model, opt) -> dict[str, torch.Tensor]:
    """Unsharded model + optimizer state, fqn keys (collective under FSDP2)."""
    msd, osd = get_state_dict(model, opt, options=FULL)
    return {**{f"model.{k}": v for k, v in msd.items()}, **{f"optim.{k}": v for k, v in osd.items()}}


def mismatches(got: dict, want: dict) -> list[str]:
    bad = sorted(set(got) ^ set(want))
    for k in set(got) & set(want):
        a, b = got[k], want[k]
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)):
                bad.append(k)
        elif a != b:
            bad.append(k)
    return bad


class Recorder:
    """A per-rank state that only records what it is given."""

    loaded: dict | None = None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        self.loaded = state_dict


def _rank_main(rank: int, store: str, root: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from dinov3_us.checkpointer import CheckpointManager, ModelOptimizerState, RNGState, TrainState

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(f"{record.levelname} {record.getMessage()}")
    logging.getLogger("dinov3_us").addHandler(handler)
    logging.getLogger("dinov3_us").setLevel(logging.INFO)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    mesh, out = init_device_mesh("cpu", (2,)), Path(root)
    result = {}

    # 1 -> 2: the single-process checkpoint in ckpt1/
    model, opt = make(100 + rank, mesh)
    train = TrainState()
    it = CheckpointManager(out / "ckpt1", period=1, max_to_keep=3, keep_every=0).load(
        {"model": ModelOptimizerState(model, opt), "train": train}, rank_states={"rng": RNGState()})
    result["one_to_two"] = {"iteration": it, "bad": mismatches(full(model, opt), torch.load(out / "ref1.pt")),
                            "extra": train.extra, "mask_stateless": model.mask_token not in opt.state}

    # 2 -> 2: train on, save at 2 and 3, reload 3 into a fresh sharded model
    ckpt = CheckpointManager(out / "ckpt2", period=1, max_to_keep=5, keep_every=0)
    for i in (2, 3):
        train_step(model, opt, 10 * i + rank)
        states = {"model": ModelOptimizerState(model, opt), "train": TrainState(i, 8 * i)}
        ckpt.save(i, states, rank_states={"rng": RNGState()})
    draws = torch.rand(4)
    local = {k: v.to_local().clone() if isinstance(v, DTensor) else v.clone()
             for k, v in get_state_dict(model, opt, options=SHARDED)[1].items() if isinstance(v, torch.Tensor)}
    local.update({k: v.to_local().clone() for k, v in model.state_dict().items() if isinstance(v, DTensor)})
    reference = full(model, opt)
    if rank == 0:
        torch.save(reference, out / "ref3.pt")
    model2, opt2 = make(200 + rank, mesh)
    train2 = TrainState()
    it = ckpt.load({"model": ModelOptimizerState(model2, opt2), "train": train2}, rank_states={"rng": RNGState()})
    got = {k: v.to_local() if isinstance(v, DTensor) else v
           for k, v in get_state_dict(model2, opt2, options=SHARDED)[1].items() if isinstance(v, torch.Tensor)}
    got.update({k: v.to_local() for k, v in model2.state_dict().items() if isinstance(v, DTensor)})
    result["two_to_two"] = {"iteration": it, "bad_local": mismatches(got, local), "n_local": len(local),
                            "bad_full": mismatches(full(model2, opt2), reference),
                            "same_draws": torch.equal(torch.rand(4), draws), "train": [train2.iteration,
                                                                                   train2.images_seen]}
    result["messages"] = messages
    (out / f"result{rank}.json").write_text(json.dumps(result))

    # crash in the middle of saving 4 (the pytest process SIGKILLs us during the sleep)
    def hang(tmp: Path) -> None:
        (out / f"committing{rank}").write_text(str(tmp))
        time.sleep(120)

    ckpt.before_commit = hang
    train_step(model2, opt2, 40 + rank)
    ckpt.save(4, {"model": ModelOptimizerState(model2, opt2), "train": TrainState(4, 32)})


def test_sharded_save_load_reshard_and_kill(tmp_path, caplog):
    from dinov3_us.checkpointer import MARKER, CheckpointManager, ModelOptimizerState, RNGState, TrainState

    model, opt = make(0)  # the single-process checkpoint for 1 -> 2
    train_step(model, opt, 1)
    CheckpointManager(tmp_path / "ckpt1", period=1, max_to_keep=3, keep_every=0).save(
        1, {"model": ModelOptimizerState(model, opt), "train": TrainState(1, 4, {"epoch": 0})},
        rank_states={"rng": RNGState()})
    torch.save(full(model, opt), tmp_path / "ref1.pt")

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    store = tmp_path / f"store_{time.monotonic_ns()}"
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(store), str(tmp_path)], env=env,
                              start_new_session=True) for r in range(2)]
    try:
        deadline = time.monotonic() + 150
        while not all((tmp_path / f"committing{r}").exists() for r in range(2)):
            assert time.monotonic() < deadline, "ranks did not reach the crash point in time"
            assert all(p.poll() is None for p in procs), f"a rank exited early: {[p.poll() for p in procs]}"
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    results = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["one_to_two"] == {"iteration": 1, "bad": [], "extra": {"epoch": 0}, "mask_stateless": True}, r
        two = res["two_to_two"]
        assert two["iteration"] == 3 and two["bad_local"] == [] and two["bad_full"] == [], (r, two)
        assert two["n_local"] >= 9 and two["same_draws"] and two["train"] == [3, 24], (r, two)
        assert any(m.startswith("INFO Resuming from ") and m.endswith("/ckpt2/3 at iteration 3")
                   for m in res["messages"]), res["messages"]
    assert any("no per-rank state for rank 1" in m for m in results[1]["messages"])  # 1 -> 2: rank 1 is new

    # the crash left a DCP-complete but uncommitted .tmp-4; 3 is still the latest and loads into 1 process
    ckpt = CheckpointManager(tmp_path / "ckpt2", period=1, max_to_keep=5, keep_every=0)
    tmp4 = tmp_path / "ckpt2" / ".tmp-4"
    assert (tmp4 / ".metadata").is_file() and not (tmp4 / MARKER).exists()
    assert ckpt.latest() == tmp_path / "ckpt2" / "3"
    model1, opt1 = make(300)
    caplog.set_level(logging.WARNING, logger="dinov3_us")
    rng = Recorder()  # receives rank 0's RNG state without touching this process's generators
    assert ckpt.load({"model": ModelOptimizerState(model1, opt1), "train": TrainState()}, rank_states={"rng": rng}) == 3
    assert sorted(rng.loaded) == ["numpy", "python", "torch"]
    assert "of ranks 1..1 are dropped" in caplog.text
    assert mismatches(full(model1, opt1), torch.load(tmp_path / "ref3.pt")) == []
    assert model1.mask_token not in opt1.state
    ckpt.save(5, {"model": ModelOptimizerState(model1, opt1), "train": TrainState(5, 40)})
    assert sorted(p.name for p in (tmp_path / "ckpt2").iterdir()) == ["2", "3", "5"]


if __name__ == "__main__":
    _rank_main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
