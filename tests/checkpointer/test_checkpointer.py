"""CheckpointManager in one process: real DCP files on disk, real AdamW, no mocks."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dinov3_us.checkpointer import (
    MARKER,
    CheckpointManager,
    ModelOptimizerState,
    NoUsableCheckpointError,
    RNGState,
    TrainState,
    damaged_files,
    invalid_reason,
)
from dinov3_us.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[2]


class Tiny(nn.Module):
    """Two linear blocks, a head, a buffer and a `mask_token` used only when asked."""

    def __init__(self, extra: bool = False, head: bool = True):
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(1, 4))
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
        self.head = nn.Linear(4, 3) if head else nn.Identity()
        self.register_buffer("center", torch.zeros(3))
        if extra:
            self.extra_param = nn.Parameter(torch.zeros(2))

    def forward(self, x, mask: bool = False):
        if mask:
            x = x + self.mask_token
        for b in self.blocks:
            x = torch.relu(b(x))
        return self.head(x)


def make(seed: int, **kw):
    torch.manual_seed(seed)
    model = Tiny(**kw)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)


def step(model, opt, seed: int, mask: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=g)
    opt.zero_grad(set_to_none=True)
    model(x, mask=mask).square().mean().backward()
    opt.step()
    model.center.add_(0.5)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def two_checkpoints(tmp_path) -> tuple[CheckpointManager, dict[str, torch.Tensor]]:
    """Checkpoints 1 and 2 of a model trained one step between them; (manager, the model's state at 1)."""
    model, opt = make(0)
    states = {"model": ModelOptimizerState(model, opt)}
    ckpt = manager(tmp_path)
    step(model, opt, 1)
    ckpt.save(1, states)
    first = snapshot(model)
    step(model, opt, 2)
    ckpt.save(2, states)
    return ckpt, first


def manager(tmp_path, **kw) -> CheckpointManager:
    args = {"period": 1, "max_to_keep": 10, "keep_every": 0, **kw}
    return CheckpointManager(tmp_path / "ckpt", **args)


def test_roundtrip_is_an_exact_resume(tmp_path, caplog):
    model, opt = make(0)
    step(model, opt, 1)  # mask_token gets no gradient: AdamW keeps no state for it
    step(model, opt, 2)
    train = TrainState(iteration=2, images_seen=16, extra={"loader": {"epoch": 1, "pos": [3, 5]}, "nan_streak": 0})
    ckpt = manager(tmp_path)
    path = ckpt.save(2, {"model": ModelOptimizerState(model, opt), "train": train}, rank_states={"rng": RNGState()})
    after_capture = (torch.rand(5), random.random(), np.random.rand(3))
    weights = snapshot(model)
    opt_state = {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state_dict()["state"].items()}
    step(model, opt, 3, mask=True)  # the uninterrupted run continues, now using mask_token
    reference = snapshot(model)

    marker = json.loads((path / MARKER).read_text())
    assert path.name == "2" and marker["iteration"] == 2 and marker["world_size"] == 1
    assert {".metadata", "rank0.pt"} <= set(marker["files"]) and any(f.endswith(".distcp") for f in marker["files"])

    model2, opt2 = make(99)  # fresh process: other init, empty optimizer
    train2 = TrainState()
    caplog.set_level(logging.INFO, logger="dinov3_us")
    got = ckpt.load({"model": ModelOptimizerState(model2, opt2), "train": train2}, rank_states={"rng": RNGState()})
    assert got == 2
    assert f"Resuming from {path} at iteration 2" in caplog.text
    assert (torch.rand(5).tolist(), random.random(), np.random.rand(3).tolist()) == (
        after_capture[0].tolist(), after_capture[1], after_capture[2].tolist())
    for k, v in weights.items():
        assert torch.equal(model2.state_dict()[k], v), k
    assert model2.mask_token not in opt2.state  # stateless as in the saving run
    loaded_state = opt2.state_dict()["state"]
    assert sorted(loaded_state) == sorted(opt_state) and len(opt_state) == 6
    for pid, entries in opt_state.items():
        for name, value in entries.items():
            assert torch.equal(loaded_state[pid][name], value), (pid, name)
    assert (train2.iteration, train2.images_seen, train2.extra) == (2, 16, train.extra)

    step(model2, opt2, 3, mask=True)  # same step as the uninterrupted run -> same weights, bit for bit
    for k, v in reference.items():
        assert torch.equal(model2.state_dict()[k], v), k


def test_save_before_first_step_changes_nothing(tmp_path):
    model, opt = make(0)
    ckpt = manager(tmp_path)
    ckpt.save(0, {"model": ModelOptimizerState(model, opt)})
    assert not opt.state  # saving did not initialise the optimizer
    model2, opt2 = make(1)
    assert ckpt.load({"model": ModelOptimizerState(model2, opt2)}) == 0
    assert not opt2.state
    assert torch.equal(model2.mask_token, model.mask_token)


def test_should_save_and_keep_policy(tmp_path):
    with pytest.raises(ConfigError, match="max_to_keep"):
        manager(tmp_path, max_to_keep=0)
    ckpt = manager(tmp_path, period=3, max_to_keep=2, keep_every=4)
    assert [i for i in range(10) if ckpt.should_save(i)] == [3, 6, 9]
    model, _ = make(0)
    kept = []
    for it in range(1, 10):
        ckpt.save(it, {"model": ModelOptimizerState(model, None)})
        kept.append(sorted(int(p.name) for p in ckpt.ckpt_dir.iterdir()))
    assert kept[4] == [4, 5]  # after iteration 5: last two are 4, 5 (4 also kept forever)
    assert kept[6] == [4, 6, 7]
    assert kept[-1] == [4, 8, 9]
    assert ckpt.latest() == ckpt.ckpt_dir / "9"


def test_failed_deletion_logs_and_continues(tmp_path, caplog, monkeypatch):
    import dinov3_us.checkpointer.checkpointer as module

    model, _ = make(0)
    states = {"model": ModelOptimizerState(model, None)}
    ckpt = manager(tmp_path, max_to_keep=1)
    ckpt.save(1, states)
    real_rmtree = module.shutil.rmtree

    def failing(path, *a, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(module.shutil, "rmtree", failing)
    caplog.set_level(logging.WARNING, logger="dinov3_us")
    assert ckpt.save(2, states) == ckpt.ckpt_dir / "2"  # the save itself succeeded
    assert "Could not delete" in caplog.text and "Permission denied" in caplog.text
    assert ckpt.latest() == ckpt.ckpt_dir / "2" and not (ckpt.ckpt_dir / "1").exists()  # renamed away first
    monkeypatch.setattr(module.shutil, "rmtree", real_rmtree)
    ckpt.save(3, states)
    assert sorted(p.name for p in ckpt.ckpt_dir.iterdir()) == ["3"]  # the leftover .trash-* is gone


def test_half_written_save_is_ignored_then_cleaned(tmp_path, caplog):
    model, _ = make(0)
    states = {"model": ModelOptimizerState(model, None)}
    ckpt = manager(tmp_path)
    ckpt.save(1, states)
    (ckpt.ckpt_dir / ".tmp-2").mkdir()
    (ckpt.ckpt_dir / ".tmp-2" / "__0_0.distcp").write_bytes(b"half")
    (ckpt.ckpt_dir / "3").mkdir()  # a folder without marker
    caplog.set_level(logging.WARNING, logger="dinov3_us")
    assert ckpt.latest() == ckpt.ckpt_dir / "1"
    assert "Skipping checkpoint" in caplog.text and "3: no COMPLETE.json" in caplog.text
    assert ckpt.load(states) == 1
    ckpt.save(4, states)
    assert not (ckpt.ckpt_dir / ".tmp-2").exists()
    assert ckpt.latest() == ckpt.ckpt_dir / "4"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_metadata"])
def test_damaged_latest_falls_back_to_previous(tmp_path, caplog, damage):
    ckpt, first = two_checkpoints(tmp_path)
    data = next((ckpt.ckpt_dir / "2").glob("*.distcp"))
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-100])
    elif damage == "garbage":  # same size: passes the marker check, fails in DCP
        data.write_bytes(np.random.default_rng(0).bytes(data.stat().st_size))
    else:
        (ckpt.ckpt_dir / "2" / ".metadata").unlink()
    model2, opt2 = make(5)
    caplog.set_level(logging.INFO, logger="dinov3_us")
    assert ckpt.load({"model": ModelOptimizerState(model2, opt2)}) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(ckpt.ckpt_dir / "2") in w for w in warnings), warnings
    assert f"Resuming from {ckpt.ckpt_dir / '1'} at iteration 1" in caplog.text
    for k, v in first.items():
        assert torch.equal(model2.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match="2"):  # an explicit path never falls back
        ckpt.load({"model": ModelOptimizerState(model2, opt2)}, ckpt.ckpt_dir / "2")


def test_key_mismatch_is_an_error_naming_the_keys(tmp_path):
    model, opt = make(0)
    step(model, opt, 1)
    ckpt = manager(tmp_path)
    ckpt.save(1, {"model": ModelOptimizerState(model, opt), "train": TrainState()})
    bigger, bigger_opt = make(0, extra=True)
    with pytest.raises(CheckpointError, match=r"missing keys \[.*model\.extra_param"):
        ckpt.load({"model": ModelOptimizerState(bigger, bigger_opt), "train": TrainState()})
    headless, _ = make(0, head=False)
    with pytest.raises(CheckpointError, match=r"unexpected keys \[.*model\.head\.weight"):
        ckpt.load({"model": ModelOptimizerState(headless, None), "train": TrainState()})
    with pytest.raises(CheckpointError, match=r"unexpected keys \[.*train\.iteration"):
        ckpt.load({"model": ModelOptimizerState(*make(0))})


def test_rank_states_absent_are_left_untouched(tmp_path, caplog):
    model, _ = make(0)
    ckpt = manager(tmp_path)
    ckpt.save(5, {"model": ModelOptimizerState(model, None)})  # no rank states saved
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    caplog.set_level(logging.WARNING, logger="dinov3_us")
    assert ckpt.load({"model": ModelOptimizerState(model, None)}, rank_states={"rng": RNGState()}) == 5
    assert "no per-rank state for rank 0" in caplog.text
    assert torch.equal(torch.rand(3), expected)


def test_saving_an_iteration_again_replaces_it(tmp_path):
    model, _ = make(0)
    states = {"model": ModelOptimizerState(model, None)}
    ckpt = manager(tmp_path)
    ckpt.save(3, states)
    with torch.no_grad():
        model.head.bias.fill_(7.0)
    ckpt.save(3, states)
    assert sorted(p.name for p in ckpt.ckpt_dir.iterdir()) == ["3"]
    model2, _ = make(1)
    assert ckpt.load({"model": ModelOptimizerState(model2, None)}) == 3
    assert torch.equal(model2.head.bias, torch.full((3,), 7.0))


def test_damage_at_the_same_size_is_caught_by_the_checksums(tmp_path, caplog):
    ckpt, first = two_checkpoints(tmp_path)
    info = json.loads((ckpt.ckpt_dir / "2" / MARKER).read_text())
    assert set(info["crc32"]) == set(info["files"]) and damaged_files(ckpt.ckpt_dir / "2") == []
    data = next((ckpt.ckpt_dir / "2").glob("*.distcp"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one tensor: DCP reads it without complaint
    data.write_bytes(bytes(raw))
    assert invalid_reason(ckpt.ckpt_dir / "2") is None and damaged_files(ckpt.ckpt_dir / "2") == [data.name]
    model2, opt2 = make(5)
    caplog.set_level(logging.WARNING, logger="dinov3_us")
    assert ckpt.load({"model": ModelOptimizerState(model2, opt2)}) == 1
    assert f"checkpoint {ckpt.ckpt_dir / '2'} is damaged: {data.name}" in caplog.text
    assert all(torch.equal(model2.state_dict()[k], v) for k, v in first.items())
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.load({"model": ModelOptimizerState(model2, opt2)}, ckpt.ckpt_dir / "2")


def test_checkpoints_none_of_which_is_usable_stop_the_run_until_set_aside(tmp_path):
    model, opt = make(0)
    states = {"model": ModelOptimizerState(model, opt)}
    ckpt = manager(tmp_path)
    ckpt.save(1, states)
    ckpt.save(2, states)
    for it in (1, 2):
        (ckpt.ckpt_dir / str(it) / MARKER).unlink()
    with pytest.raises(NoUsableCheckpointError, match="holds 2 checkpoint folder.*none is complete"):
        ckpt.load(states)
    aside = ckpt.set_aside()
    assert sorted(p.name for p in aside.iterdir()) == ["1", "2"] and ckpt.load(states) is None


@pytest.mark.slow
def test_a_failed_save_raises_everywhere_and_leaves_only_the_previous_checkpoints(tmp_path):
    """A real write failure (the file-size limit, EFBIG, as a full disk gives ENOSPC) in a child process."""
    code = f"""
import resource, signal, sys, torch
sys.path.insert(0, {str(REPO)!r})
from dinov3_us.checkpointer import CheckpointManager, TrainState
from dinov3_us.errors import CheckpointError
ckpt = CheckpointManager({str(tmp_path / "ckpt")!r}, period=1, max_to_keep=5, keep_every=0)
ckpt.save(1, {{"train": TrainState()}})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    ckpt.save(2, {{"train": TrainState(extra={{"big": torch.zeros(100_000)}})}})
except CheckpointError as err:
    print("ERROR", err)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR saving checkpoint" in proc.stdout and "File too large" in proc.stdout, proc.stdout
    assert "nothing committed" in proc.stdout and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["1"]


def test_the_best_checkpoint_is_kept_beyond_the_last_n_and_replaced_atomically(tmp_path):
    ckpt = manager(tmp_path, max_to_keep=2)
    model, _ = make(0)
    states = {"model": ModelOptimizerState(model, None)}
    ckpt.save(1, states)
    ckpt.mark_best(1, {"metric": "monitor_knn", "score": 0.5})
    for it in (2, 3, 4):
        ckpt.save(it, states)
    assert sorted(p.name for p in ckpt.ckpt_dir.iterdir() if p.is_dir()) == ["1", "3", "4"]  # 1: the best
    folder, record = ckpt.best()
    assert folder == ckpt.ckpt_dir / "1" and record == {"iteration": 1, "metric": "monitor_knn", "score": 0.5}
    ckpt.mark_best(4, {"metric": "monitor_knn", "score": 0.7})
    assert sorted(p.name for p in ckpt.ckpt_dir.iterdir() if p.is_dir()) == ["3", "4"]  # the old best goes
    assert ckpt.best()[0] == ckpt.ckpt_dir / "4"
    with pytest.raises(CheckpointError, match="cannot mark checkpoint 9 as the best"):
        ckpt.mark_best(9, {})


@pytest.mark.parametrize("crash", ["during the save of the new best", "before the old best is deleted"])
@pytest.mark.slow
def test_kill_9_while_the_best_is_replaced_leaves_a_complete_best(tmp_path, crash):
    """A real SIGKILL of a child process at the two points of a replacement; best.json always names a checkpoint
    that loads, and the next save of a fresh manager tidies up."""
    kill = "os.kill(os.getpid(), signal.SIGKILL)"
    hook = (f"ckpt.before_commit = lambda tmp: {kill}" if crash.startswith("during") else  # the 2nd policy: mark_best's
            f"keep, calls = ckpt._apply_keep_policy, []\nckpt._apply_keep_policy = lambda: calls.append(1) or "
            f"(keep() if len(calls) == 1 else {kill})")
    code = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO)!r})
from dinov3_us.checkpointer import CheckpointManager, TrainState
ckpt = CheckpointManager({str(tmp_path / "ckpt")!r}, period=1, max_to_keep=1, keep_every=0)
ckpt.save(1, {{"train": TrainState(iteration=1)}})
ckpt.mark_best(1, {{"score": 0.5}})
{hook}
ckpt.save(2, {{"train": TrainState(iteration=2)}})
ckpt.mark_best(2, {{"score": 0.7}})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    ckpt = manager(tmp_path, max_to_keep=1)
    folder, record = ckpt.best()
    expected = 1 if crash.startswith("during") else 2
    assert record["iteration"] == expected and invalid_reason(folder) is None
    state = TrainState()
    assert ckpt.load({"train": state}, folder) == expected and state.iteration == expected
    ckpt.save(3, {"train": TrainState(iteration=3)})
    assert sorted(p.name for p in ckpt.ckpt_dir.iterdir() if p.is_dir()) == sorted({str(expected), "3"})
