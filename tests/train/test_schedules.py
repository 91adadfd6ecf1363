"""Schedules: values at warmup end and at the end, v1 and v2 styles, lr scaling, last-layer freeze."""

import math

import numpy as np
import pytest

from dinov3_us.configs import load_config
from dinov3_us.errors import ConfigError
from dinov3_us.train.schedules import build_schedulers, cosine_schedule, linear_warmup_cosine_decay, lr_scale

BASE = ["train.OFFICIAL_EPOCH_LENGTH=10", "optim.epochs=20", "optim.warmup_epochs=2", "optim.lr=0.001",
        "optim.min_lr=1e-6", "train.batch_size_per_gpu=64", "teacher.warmup_teacher_temp_epochs=5",
        "optim.freeze_last_layer_epochs=1"]


def test_v1_schedules_key_values():
    sch = build_schedulers(load_config(overrides=BASE), world_size=4)  # global batch 256
    peak = 0.001 * 4 * math.sqrt(256 / 1024)
    assert len(sch.lr) == 200
    assert sch.lr[0] == 0.0
    assert sch.lr[19] == pytest.approx(peak)  # end of the 20 warmup iterations
    assert sch.lr[20] == pytest.approx(peak)  # cosine starts at the peak
    assert 1e-6 <= sch.lr[-1] < 2e-6  # the official cosine stops one step short of min_lr
    assert np.all(np.diff(sch.lr[20:]) <= 1e-12)  # monotone decay after warmup
    assert sch.weight_decay[0] == pytest.approx(0.04) and sch.weight_decay[-1] == pytest.approx(0.4, rel=1e-3)
    assert sch.momentum[0] == pytest.approx(0.992) and sch.momentum[-1] == pytest.approx(1.0, abs=1e-6)
    assert sch.teacher_temp[0] == pytest.approx(0.04) and sch.teacher_temp[49] == pytest.approx(0.07)
    assert sch.teacher_temp[-1] == pytest.approx(0.07)
    assert np.all(sch.last_layer_lr[:10] == 0) and sch.last_layer_lr[10] == sch.lr[10]
    assert sch.at(10_000)["lr"] == pytest.approx(sch.lr[-1])  # past the end: the last value


def test_v2_schedules():
    cfg = load_config(overrides=BASE + ["schedules.enabled=true", "schedules.lr.peak=0.002", "schedules.lr.end=0.0",
                                        "schedules.lr.warmup_epochs=3", "schedules.lr.cosine_epochs=10",
                                        "optim.scaling_rule=none", "schedules.teacher_temp.warmup_epochs=5"])
    sch = build_schedulers(cfg)
    assert sch.lr[0] == 0.0 and sch.lr[30] == pytest.approx(0.002)
    assert sch.lr[129] == pytest.approx(0.0) and np.all(sch.lr[130:] == 0.0)  # constant after the cosine
    assert np.all(sch.weight_decay == 0.04)


def test_v2_warmup_longer_than_training_names_the_schedule():
    with pytest.raises(ConfigError, match="schedules.teacher_temp"):
        build_schedulers(load_config(overrides=BASE + ["schedules.enabled=true"]))  # 30 warmup epochs > 20


def test_scaling_rules_and_errors():
    assert lr_scale("sqrt_wrt_1024", 1024) == 4.0
    assert lr_scale("linear_wrt_256", 512) == 2.0
    assert lr_scale("none", 7) == 1.0
    with pytest.raises(ConfigError, match="exceed the total"):
        cosine_schedule(1.0, 0.0, total_iters=5, warmup_iters=10)
    with pytest.raises(ConfigError, match="exceed the total"):
        linear_warmup_cosine_decay(0, 1, 0, warmup_iterations=5, total_iterations=10, cosine_iterations=8)


def test_trunc_extra_ends_at_final_value():
    values = cosine_schedule(1.0, 0.1, total_iters=100, warmup_iters=10, trunc_extra=0.25)
    assert len(values) == 100 and values[10] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
