"""The self-distillation alarm: its rule on logged metrics, and both ways on real tiny pretraining runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dinov3_us.train.monitor import SelfDistillationWatch, dino_loss_ratio

REPO = Path(__file__).resolve().parents[2]
K = 256
LN_K = math.log(K)


def stalled(ratio=1.0, entropy=1.0) -> dict:
    return {"dino_global_crops_loss": ratio * LN_K, "dino_local_crops_loss": ratio * LN_K, "target_entropy": entropy}


def test_dino_loss_ratio_is_the_mean_of_both_terms_over_ln_k():
    metrics = {"dino_global_crops_loss": 0.5 * LN_K, "dino_local_crops_loss": 1.0 * LN_K}
    assert dino_loss_ratio(metrics, K) == pytest.approx(0.75)
    assert dino_loss_ratio({"koleo_loss": 1.0}, K) is None


def test_fires_once_after_patience_iterations_past_warmup():
    watch = SelfDistillationWatch(K, patience=30, start=20)
    fired = []
    for it in range(0, 200, 10):
        metrics = stalled()
        message = watch.update(it, metrics)
        if message:
            fired.append((it, message))
        assert metrics["selfdistill_stalled"] == float(it >= 20 + 30)  # stalled since 20
    assert [it for it, _ in fired] == [50]
    assert "self-distillation has not started after 51 iterations" in fired[0][1]
    assert "teacher temperature" in fired[0][1]  # names the decisive knobs


def test_a_run_that_leaves_the_plateau_is_not_flagged_and_the_count_restarts():
    watch = SelfDistillationWatch(K, patience=30, start=0)
    for it in (0, 10):
        assert watch.update(it, stalled()) is None
    low = stalled(ratio=0.9)
    assert watch.update(20, low) is None and low["selfdistill_stalled"] == 0.0  # loss below 0.97 ln K
    sharp = stalled(entropy=0.5)
    assert watch.update(30, sharp) is None and sharp["selfdistill_stalled"] == 0.0  # informative targets
    for it in (40, 50, 60):
        assert watch.update(it, stalled()) is None  # counting again from 40
    assert watch.update(70, stalled()) is not None


def test_state_round_trip_flags_the_same_iterations_after_a_resume():
    a = SelfDistillationWatch(K, patience=50, start=0)
    for it in range(0, 30, 10):
        a.update(it, stalled())
    b = SelfDistillationWatch(K, patience=50, start=0)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # as stored in the checkpoint
    for it in range(30, 80, 10):
        ma, mb = stalled(), stalled()
        assert (a.update(it, ma) is None) == (b.update(it, mb) is None)
        assert ma == mb


def test_a_negative_patience_is_a_config_error():
    from dinov3_us.errors import ConfigError

    with pytest.raises(ConfigError, match="train.selfdistill_alarm_iterations"):
        SelfDistillationWatch(K, patience=-1)


def test_patience_zero_switches_the_alarm_off():
    watch = SelfDistillationWatch(K, patience=0)
    for it in range(0, 1000, 10):
        metrics = stalled()
        assert watch.update(it, metrics) is None and metrics["selfdistill_stalled"] == 0.0


def _train(out: Path, data: str, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "--config-file", str(REPO / "configs/train/tiny_cpu.yaml"),
           "--output-dir", str(out), f"train.dataset_path={data}", "train.log_period=5",
           "checkpointing.period=1000", "evaluation.eval_period_iterations=0", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "training_metrics.jsonl").read_text().splitlines()]
    return proc, records


def small_data_knobs() -> list[str]:
    """The self-distillation knobs of the shipped small-data preset (configs/train/small_cpu.yaml) as overrides."""
    import yaml

    preset = yaml.safe_load((REPO / "configs/train/small_cpu.yaml").read_text())
    keys = [("dino", "head_n_prototypes"), ("ibot", "head_n_prototypes"), ("dino", "head_norm_last_layer"),
            ("ibot", "head_norm_last_layer"), ("student", "layerscale"), ("teacher", "warmup_teacher_temp"),
            ("teacher", "teacher_temp"), ("teacher", "momentum_teacher"), ("optim", "freeze_last_layer_epochs"),
            ("optim", "lr")]
    return [f"{section}.{key}={preset[section][key]}" for section, key in keys]


@pytest.mark.slow
def test_the_official_knobs_trip_the_alarm_on_a_tiny_run(tmp_path, phantom_shards):
    # tiny_cpu.yaml keeps the official self-distillation knobs (plain prototypes, 0.04 -> 0.07, LayerScale 1e-5)
    proc, records = _train(tmp_path / "run", f"{phantom_shards}:train", "optim.epochs=4",
                           "train.OFFICIAL_EPOCH_LENGTH=20", "train.selfdistill_alarm_iterations=40")
    assert proc.stdout.count("self-distillation has not started after") == 1
    assert records[-1]["selfdistill_stalled"] == 1.0 and records[-1]["dino_loss_ratio"] > 0.97
    assert all(r["selfdistill_stalled"] == 0.0 for r in records if r["iteration"] < 20 + 40)  # warm-up + patience
    from dinov3_us.train.metric_logger import progress_line

    assert "WARNING: self-distillation has not started" in progress_line(tmp_path / "run")
    first = next(r["iteration"] + 1 for r in records if r["selfdistill_stalled"] == 1.0)
    report = (tmp_path / "run" / "report.md").read_text()  # the run report's summary, as `make demo` prints it
    assert f"never below 0.97 ln K; the self-distillation alarm fired at iteration {first}." in report


@pytest.mark.slow
def test_the_small_data_knobs_leave_the_plateau_on_hc18_and_do_not_trip_it(tmp_path, data_dir):
    shards = tmp_path / "hc18"
    curate = subprocess.run([sys.executable, str(REPO / "tools" / "build_dataset.py"), "--source", "hc18", "--task",
                             "hc-terciles", "--root", str(data_dir / "hc18"), "--out", str(shards), "--no-progress"],
                            capture_output=True, text=True, timeout=600)
    assert curate.returncode == 0, curate.stderr[-2000:]
    proc, records = _train(tmp_path / "run", f"{shards}:train,unlabelled", *small_data_knobs(),
                           "train.batch_size_per_gpu=16", "train.OFFICIAL_EPOCH_LENGTH=100", "optim.epochs=3",
                           "train.selfdistill_alarm_iterations=100")
    assert "self-distillation has not started" not in proc.stdout
    assert all(r.get("selfdistill_stalled", 0.0) == 0.0 for r in records)
    assert min(r["target_entropy"] for r in records if r["iteration"] >= 100) < 0.9  # informative targets
    assert "the self-distillation alarm never fired" in (tmp_path / "run" / "report.md").read_text()


def test_progress_line_reads_the_last_logged_iteration(tmp_path):
    from dinov3_us.train.metric_logger import progress_line

    assert progress_line(tmp_path) is None  # nothing logged yet
    (tmp_path / "config.yaml").write_text("optim:\n  epochs: 10\ntrain:\n  OFFICIAL_EPOCH_LENGTH: 100\n")
    record = {"iteration": 339, "images_per_second": 85.24, "eta_seconds": 130.0, "dino_loss_ratio": 0.9871,
              "selfdistill_stalled": 0.0}
    (tmp_path / "training_metrics.jsonl").write_text(json.dumps({"iteration": 0}) + "\n" + json.dumps(record) + "\n")
    line = progress_line(tmp_path)
    assert line == "it 340/1000 (34%), 85.2 img/s, ETA 00:02:10, DINO loss 0.987 ln K"
    record["selfdistill_stalled"] = 1.0
    (tmp_path / "training_metrics.jsonl").write_text(json.dumps(record) + "\n")
    assert "WARNING: self-distillation has not started" in progress_line(tmp_path)


def test_progress_line_shows_the_downstream_monitors_last_scores_beside_random_init(tmp_path):
    from dinov3_us.train.metric_logger import progress_line

    (tmp_path / "config.yaml").write_text("optim:\n  epochs: 10\ntrain:\n  OFFICIAL_EPOCH_LENGTH: 100\n")
    monitored = {"iteration": 299, "monitor_knn": 0.6123, "monitor_knn_random": 0.44, "monitor_linear": 0.58,
                 "monitor_linear_random": 0.401}
    later = {"iteration": 339, "images_per_second": 85.24, "dino_loss_ratio": 0.9871}
    (tmp_path / "training_metrics.jsonl").write_text(json.dumps(monitored) + "\n" + json.dumps(later) + "\n")
    assert progress_line(tmp_path) == ("it 340/1000 (34%), 85.2 img/s, DINO loss 0.987 ln K, kNN 0.612 (random 0.440), "
                                       "linear 0.580 (random 0.401)")
