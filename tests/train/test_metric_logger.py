"""MetricLogger: the jsonl it writes, its truncation on resume, and an ETA that forgets a slow start."""

import json

from dinov3_us.train.metric_logger import MetricLogger, truncate_jsonl


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_eta_follows_the_recent_pace_and_jsonl_is_truncated_on_resume(tmp_path):
    clock = Clock()
    log = MetricLogger(tmp_path, total_iterations=1000, start_iteration=0, tensorboard=False, eta_window=3,
                       clock=clock)
    clock.now = 100.0  # a slow start: 10 s per iteration for the first 10
    log.log(9, {"total_loss": 1.0})
    for it in range(19, 100, 10):  # then 1 s per iteration
        clock.now += 10.0
        log.log(it, {"total_loss": 1.0})
    records = [json.loads(line) for line in (tmp_path / "training_metrics.jsonl").read_text().splitlines()]
    assert records[0]["eta_seconds"] == 990 * 10.0
    assert records[-1]["iteration"] == 99 and records[-1]["eta_seconds"] == 900 * 1.0
    assert truncate_jsonl(tmp_path / "training_metrics.jsonl", 50) == 5
    resumed = MetricLogger(tmp_path, total_iterations=1000, start_iteration=50, tensorboard=False, clock=clock)
    clock.now += 5.0
    resumed.log(59, {"total_loss": 2.0})
    records = [json.loads(line) for line in (tmp_path / "training_metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [9, 19, 29, 39, 49, 59] and records[-1]["eta_seconds"] == 940 * 0.5
