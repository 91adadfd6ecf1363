"""`teacher.temp_control=auto` (dinov3_us.train.teacher_temp): the rule on given statistics, its bounds, its state,
one temperature on every rank; and, in real tiny pretrainings, its limits (a constant image, one image repeated)
and its hand-over (where the teacher already spreads the images, the official schedule bit for bit)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from dinov3_us.train.teacher_temp import (
    BACKOFF,
    GUARD_BATCH_ENTROPY,
    MAX_DOWN,
    TARGET_ENTROPY_FLOOR,
    TeacherTempController,
)

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = [0.04 + 0.03 * min(i / 50, 1.0) for i in range(200)]  # the official shape: 0.04 -> 0.07 warm-up


def stats(spread_in_temps: float, used: float, batch_entropy: float = 0.95, target_entropy: float = 0.95) -> dict:
    """One step's metrics: the teacher puts images `spread_in_temps` temperatures apart at `used`."""
    return {"teacher_logit_std": spread_in_temps, "teacher_batch_entropy": batch_entropy,
            "target_entropy": target_entropy, "_used": used}


def run(controller: TeacherTempController, spread_fn, steps: int = 200, **kw) -> list[float]:
    """The temperatures a run uses when its teacher's raw logit spread is `spread_fn(step)`."""
    temps = []
    for it in range(steps):
        temp = controller.at(OFFICIAL[it])
        temps.append(temp)
        raw = spread_fn(it)
        controller.update(stats(raw / temp, temp, **kw), temp, OFFICIAL[min(it + 1, steps - 1)])
    return temps


def test_official_mode_and_an_informative_teacher_keep_the_schedule_bit_for_bit():
    assert run(TeacherTempController("official", 3.0, 1e-4), lambda it: 1e-4) == OFFICIAL
    # the teacher already spreads the images by >= 3 official temperatures: the controller never acts
    assert run(TeacherTempController("auto", 3.0, 1e-4), lambda it: 0.25) == OFFICIAL


def test_a_teacher_that_does_not_spread_the_images_gets_a_lower_temperature_within_bounds():
    temps = run(TeacherTempController("auto", 3.0, 1e-3), lambda it: 0.006)  # 0.15 official temperatures
    assert temps[0] == OFFICIAL[0] and all(t <= o for t, o in zip(temps, OFFICIAL))
    assert all(b >= a * MAX_DOWN - 1e-15 for a, b in zip(temps, temps[1:]))  # at most 10% lower per step
    assert temps[-1] == pytest.approx(0.006 / 3.0)  # holds the spread at 3 temperatures
    assert min(run(TeacherTempController("auto", 3.0, 1e-3), lambda it: 1e-5)) == 1e-3  # the floor
    # the features spread as training goes on: the official schedule takes over again, exactly
    handover = run(TeacherTempController("auto", 3.0, 1e-4), lambda it: 0.006 if it < 100 else 0.5)
    assert handover[120:] == OFFICIAL[120:] and handover[99] < OFFICIAL[99]  # once the smoothed spread caught up


@pytest.mark.parametrize("guard", [{"batch_entropy": GUARD_BATCH_ENTROPY - 0.01},
                                   {"target_entropy": TARGET_ENTROPY_FLOOR - 0.01}])
def test_the_guard_raises_the_temperature_when_a_prototype_dominates_or_the_targets_sharpen(guard):
    controller = TeacherTempController("auto", 3.0, 1e-4)
    run(controller, lambda it: 0.003, steps=100)  # down to 0.001
    low = controller.at(0.07)
    controller.update(stats(0.003 / low, low, **guard), low, 0.07)
    assert controller.at(0.07) == pytest.approx(low * BACKOFF)


def test_the_state_resumes_the_same_sequence():
    spread = np.random.default_rng(0).uniform(0.001, 0.01, 200)
    ref = run(TeacherTempController("auto", 3.0, 1e-4), lambda it: spread[it])
    first = TeacherTempController("auto", 3.0, 1e-4)
    head = run(first, lambda it: spread[it], steps=200)[:120]
    assert head == ref[:120]
    second = TeacherTempController("auto", 3.0, 1e-4)
    rerun = TeacherTempController("auto", 3.0, 1e-4)
    part = []
    for it in range(200):  # stop after 120 steps, save, restore into a fresh controller, go on
        c = second if it < 120 else rerun
        if it == 120:
            rerun.load_state_dict(json.loads(json.dumps(second.state_dict())))
        temp = c.at(OFFICIAL[it])
        part.append(temp)
        c.update(stats(spread[it] / temp, temp), temp, OFFICIAL[min(it + 1, 199)])
    assert part == ref


def _rank(rank: int, init_file: str, out) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        controller = TeacherTempController("auto", 3.0, 1e-4)
        temps = []
        for _ in range(60):  # each rank sees other statistics (its own half of the batch)
            temp = controller.at(0.07)
            temps.append(temp)
            controller.update(stats((0.002 + 0.004 * rank) / temp, temp, target_entropy=0.9 + 0.05 * rank),
                              temp, 0.07)
        out.put((rank, temps))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_rank_uses_the_same_temperature(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, str(tmp_path / "init"), out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert results[0] == results[1] and results[0][-1] == pytest.approx(0.004 / 3.0, rel=0.05)


def train(out: Path, data: Path, *extra: str) -> list[dict]:
    cmd = [sys.executable, str(REPO / "tools/train.py"), "--config-file", str(REPO / "configs/train/tiny_cpu.yaml"),
           "--output-dir", str(out), f"train.dataset_path={data}:train", "optim.epochs=1",
           "train.OFFICIAL_EPOCH_LENGTH=30", "train.log_period=1", "monitor.dataset=none", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(x) for x in (out / "training_metrics.jsonl").read_text().splitlines()]


def one_image_shards(root: Path, constant: bool) -> Path:
    """64 copies of one image (a phantom head, or a constant gray): every batch is one image repeated."""
    import io

    from PIL import Image

    from dinov3_us.data.shards import write_shard

    rng = np.random.default_rng(0)
    pixels = np.full((48, 48), 128, np.uint8) if constant else rng.integers(0, 255, (48, 48), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    root.mkdir()
    write_shard(root / "train-000000.tar", [(f"s{i:04d}", {"png": buf.getvalue(), "json": b"{}"}) for i in range(64)])
    (root / "manifest.json").write_text(json.dumps({"labels": [], "shards": {"train": [{"url": "train-000000.tar",
                                                                                          "n": 64}]}}))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("constant", [True, False], ids=["a constant image", "one image repeated"])
def test_auto_on_a_batch_of_one_image_keeps_the_targets_above_the_floor_and_the_collapse_watch_quiet(tmp_path,
                                                                                                     constant):
    records = train(tmp_path / "run", one_image_shards(tmp_path / "data", constant), "teacher.temp_control=auto")
    temps = [r["teacher_temp"] for r in records]
    assert min(temps) >= 1e-4 and all(t <= r["teacher_temp_official"] for t, r in zip(temps, records))
    assert min(r["target_entropy"] for r in records[1:]) >= TARGET_ENTROPY_FLOOR
    assert min(r["teacher_batch_entropy"] for r in records) >= 0.7  # the collapse watch's threshold
    assert "collapse watch" not in (tmp_path / "run" / "log.txt").read_text()


@pytest.mark.slow
def test_auto_resumes_exactly_and_leaves_an_informative_run_to_the_official_schedule(tmp_path, phantom_patients):
    """A tiny set point (the teacher always spreads the images by more): auto is the official run, loss for loss;
    and a run with the controller acting, stopped at a checkpoint and resumed, repeats itself."""
    official = train(tmp_path / "official", phantom_patients)
    handed_over = train(tmp_path / "auto0", phantom_patients, "teacher.temp_control=auto", "teacher.temp_spread=1e-6")
    assert [r["total_loss"] for r in handed_over] == [r["total_loss"] for r in official]
    auto = ("teacher.temp_control=auto", "checkpointing.period=15")
    full = train(tmp_path / "full", phantom_patients, *auto)
    assert min(r["teacher_temp"] / r["teacher_temp_official"] for r in full) < 0.5  # it acted
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    for ckpt in (tmp_path / "resumed" / "ckpt").iterdir():
        if ckpt.name.isdigit() and int(ckpt.name) > 14:
            shutil.rmtree(ckpt)  # as if stopped after the checkpoint at iteration 14
    resumed = train(tmp_path / "resumed", phantom_patients, *auto)
    assert "Resuming from" in (tmp_path / "resumed" / "log.txt").read_text()
    assert [(r["teacher_temp"], r["total_loss"]) for r in resumed] == [(r["teacher_temp"], r["total_loss"])
                                                                       for r in full]
