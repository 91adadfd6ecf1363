"""The downstream monitor in a real 2-process pretraining (torchrun, gloo, FSDP2): scores at every period on all
ranks' data, the best checkpoint, a kill -9 and resume that keeps both, the run report written while the run
goes on, and the last figures equal to the evaluation tools' on the same parts of the split."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import children

from dinov3_us.checkpointer import invalid_reason
from dinov3_us.data.shards import iter_samples, load_manifest, parse_dir_spec, resolve_shards, write_shard
from dinov3_us.eval.data import EvalDataset, EvalTransform
from dinov3_us.eval.downstream import partition
from dinov3_us.weights.checkpoint import convert_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PERIOD, TOTAL = 5, 20
ARGS = ["--config-file", str(REPO / "configs/train/tiny_cpu.yaml"), "optim.epochs=2", "train.OFFICIAL_EPOCH_LENGTH=10",
        "checkpointing.period=6", "checkpointing.max_to_keep=2", f"monitor.period_iterations={PERIOD}",
        "monitor.batch_size=16", "compute_precision.param_dtype=fp32", "train.log_period=1"]
LINEAR = ["linear.learning_rates=[0.001,0.01,0.1]", "linear.n_last_blocks=[1]", "linear.avgpool=[false,true]",
          "linear.epochs=10", "linear.iterations_per_epoch=10"]  # the monitor's grid (monitor.linear_*)


def torchrun(out: Path, data: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tools/train.py"), "--output-dir", str(out), f"train.dataset_path={data}:train", *ARGS]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"}, start_new_session=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def monitor_lines(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out / "training_metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("monitor_") and k != "monitor_seconds"} | {"it": r["iteration"]}
            for r in lines if "monitor_knn" in r]


@pytest.fixture(scope="module")
def runs(phantom_patients, tmp_path_factory):
    """(uninterrupted run, run killed -9 after its checkpoint at iteration 11 and resumed, `status.py --report` run
    against the second in the middle: its processes stopped (SIGSTOP) right after that checkpoint, so that the
    report is written from a run in progress however fast this machine is)."""
    root = tmp_path_factory.mktemp("monitor")
    ref, killed = root / "ref", root / "killed"
    finish(torchrun(ref, phantom_patients))
    proc = torchrun(killed, phantom_patients)
    try:
        deadline = time.monotonic() + 300
        while invalid_reason(killed / "ckpt" / "11") is not None:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its checkpoint 11"
            time.sleep(0.02)
        ranks = [p.pid for p in children(proc.pid)]  # torchrun starts each in a session of its own
        for pid in [proc.pid, *ranks]:
            os.kill(pid, signal.SIGSTOP)
        report = subprocess.run([sys.executable, str(REPO / "launchers/status.py"), str(killed), "--report"],
                                capture_output=True, text=True, timeout=300)
        midway = (killed / "report.md").read_text() if report.returncode == 0 else ""
        midway_teacher = json.loads((killed / "teacher.json").read_text())
    finally:
        for pid in [proc.pid, *(p.pid for p in children(proc.pid))]:
            os.kill(pid, signal.SIGKILL)  # torchrun and both ranks, mid-run
        proc.wait()
    resumed = finish(torchrun(killed, phantom_patients))
    assert "Resuming from" in resumed
    return ref, killed, report, midway, midway_teacher


def test_the_monitor_scores_every_period_keeps_the_best_and_a_resumed_run_keeps_both(runs):
    ref, killed, report, midway, midway_teacher = runs
    history = monitor_lines(ref)
    assert [r["it"] for r in history] == [it for it in range(TOTAL) if (it + 1) % PERIOD == 0]
    for r in history:
        assert set(r) == {"it", "monitor_knn", "monitor_knn_random", "monitor_linear", "monitor_linear_random"}
        assert 0 <= r["monitor_knn"] <= 1 and 0 <= r["monitor_linear"] <= 1
    assert len({(r["monitor_knn_random"], r["monitor_linear_random"]) for r in history}) == 1  # computed once
    best = json.loads((ref / "ckpt" / "best.json").read_text())
    top = max(r["monitor_knn"] for r in history)
    assert best["iteration"] == next(r["it"] for r in history if r["monitor_knn"] == top)  # ties: the earlier
    assert best["score"] == top and best["metric"] == "monitor_knn"
    assert invalid_reason(ref / "ckpt" / str(best["iteration"])) is None  # kept beside the last 2
    # killed -9 after checkpoint 11 and resumed: the same history (the lines after 11 were redone) and best
    assert monitor_lines(killed) == history
    assert json.loads((killed / "ckpt" / "best.json").read_text()) == best
    # teacher.pth follows the best (evaluation.teacher_checkpoint: auto): mid-run it held the best so far, written
    # from memory when that checkpoint was committed; at the end the best's teacher, byte for byte what
    # convert_checkpoint reads back from the best checkpoint, and the same after the kill and resume
    so_far = max((r for r in history if r["it"] <= 11), key=lambda r: (r["monitor_knn"], -r["it"]))
    assert midway_teacher["iteration"] == so_far["it"], midway_teacher
    assert midway_teacher["selected"].startswith("the best checkpoint on the downstream monitor")
    converted = convert_checkpoint(ref / "ckpt" / str(best["iteration"]), ref.parent / "best.pth")
    assert (ref / "teacher.pth").read_bytes() == converted.read_bytes() == (killed / "teacher.pth").read_bytes()
    assert json.loads((ref / "teacher.json").read_text())["iteration"] == best["iteration"]
    assert os.path.samefile(ref / "teacher.pth", ref / "eval" / f"training_{TOTAL - 1}" / "teacher_checkpoint.pth") \
        == (best["iteration"] == TOTAL - 1)  # the final export is teacher.pth only where the final is the best
    log = (ref / "log.txt").read_text()
    assert "random init of the same architecture" in log and "downstream monitor:" in log
    assert "random-init baseline restored from the checkpoint" in (killed / "log.txt").read_text()
    # the report, written from the files in the middle of the run (which resumed to the same history), and at
    # the end by the trainer
    assert report.returncode == 0, report.stderr[-2000:]
    assert re.search(r"\*\*Progress:\*\* 1[2-9] of 20 iterations \(\d+%\)\n", midway), midway[:500]
    for out in (ref, killed):
        for name in ("monitor", "selfdistill", "losses", "schedules", "throughput"):
            assert (out / "report" / f"{name}.png").stat().st_size > 1000, name
        page = (out / "report.html").read_text()
        assert page.count("data:image/png;base64,") == 5 and "Is it learning?" in page
        assert f"best monitor_knn {best['score']:.3f}" in (out / "report.md").read_text()


def write_parts(spec: str, out: Path) -> Path:
    """The monitor's fit / select / score parts of `spec` as the train / val / test splits of a shards folder."""
    ds = EvalDataset(spec, EvalTransform(32, 1))
    parts = partition(ds.groups, ds.targets, seed=0)
    samples = {key: members for shard in resolve_shards(spec) for _, key, members in iter_samples(shard.url)}
    manifest = load_manifest(parse_dir_spec(spec)[0]) | {"shards": {}}
    out.mkdir()
    for split, part in (("train", "fit"), ("val", "select"), ("test", "score")):
        write_shard(out / f"{split}-000000.tar", [(ds.keys[i], samples[ds.keys[i]]) for i in parts[part]])
        manifest["shards"][split] = [{"url": f"{split}-000000.tar", "n": len(parts[part])}]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("task", ["knn", "linear"])
def test_the_last_monitor_figures_are_the_evaluation_tools_figures_on_the_same_parts(runs, phantom_patients, task,
                                                                                   tmp_path):
    """Same features (the final teacher, exported), same probe: the evaluation of the fit / select / score parts
    gives the monitor's last figure, and its random-init baseline the monitor's random line."""
    ref = runs[0]
    parts = write_parts(f"{phantom_patients}:val", tmp_path / "parts")
    teacher = ref / "eval" / f"training_{TOTAL - 1}" / "teacher_checkpoint.pth"
    proc = subprocess.run([sys.executable, str(REPO / f"tools/eval_{task}.py"), "--pretrained-weights", str(teacher),
                           "--train-dataset", f"{parts}:train", "--val-dataset", f"{parts}:val", "--test-datasets",
                           f"{parts}:test", "--output-dir", str(tmp_path / "eval"), "--no-progress",
                           "report.baseline=random", *(LINEAR if task == "linear" else [])],
                          capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    baseline = json.loads((tmp_path / "eval" / "baseline_random" / "results.json").read_text())
    last = monitor_lines(ref)[-1]
    assert last["it"] == TOTAL - 1
    assert round(results["metrics"]["weighted_f1"], 4) == round(last[f"monitor_{task}"], 4)
    assert round(baseline["metrics"]["weighted_f1"], 4) == round(last[f"monitor_{task}_random"], 4)


def test_the_monitor_does_not_change_the_run_it_watches(phantom_patients, tmp_path):
    """Monitor on (every 3 iterations) and off: the same losses at every iteration (no global RNG draw, no state)."""
    losses = {}
    for name, extra in (("on", "monitor.period_iterations=3"), ("off", "monitor.dataset=none")):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, str(REPO / "tools/train.py"), "--config-file",
                               str(REPO / "configs/train/tiny_cpu.yaml"), "--output-dir", str(out),
                               f"train.dataset_path={phantom_patients}:train", "optim.epochs=1",
                               "train.OFFICIAL_EPOCH_LENGTH=12", "train.log_period=1", extra],
                              capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        records = [json.loads(x) for x in (out / "training_metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["total_loss"] for r in records]
    assert len(monitor_lines(tmp_path / "on")) == 4 and not monitor_lines(tmp_path / "off")
    assert losses["on"] == losses["off"] and len(losses["on"]) == 12
