"""Evaluation config: the study's protocol file is valid, precedence is file < flags < overrides, typos are named."""

from pathlib import Path

import pytest

from dinov3_us.errors import ConfigError
from dinov3_us.eval.config import (
    OFFICIAL_LEARNING_RATES,
    EvalConfig,
    check_eval_config,
    eval_schema,
    load_eval_config,
    write_eval_config,
)
from dinov3_us.models import ARCHS

PROTOCOL = Path(__file__).resolve().parents[2] / "configs" / "eval" / "fpdb_brain_planes.yaml"


def test_the_study_protocol_file():
    cfg = load_eval_config(PROTOCOL)
    assert cfg.data.train_dataset.endswith(":train") and cfg.data.test_datasets[0].endswith(":test")
    assert cfg.data.image_size == 224
    lin = cfg.linear
    assert lin.learning_rates == OFFICIAL_LEARNING_RATES and lin.n_last_blocks == [1, 2, 4, 6]
    assert lin.losses == ["ce", "focal", "label_smoothing"] and lin.epochs == 200 and lin.batch_size == 16
    assert lin.weight_decay == 1e-2 and lin.patience == 20 and lin.select_metric == "weighted_f1"
    assert cfg.knn.ks == [10, 20, 100, 200] and cfg.knn.temperature == 0.07


def test_precedence_and_roundtrip(tmp_path):
    cfg = load_eval_config(PROTOCOL, {"data.image_size": 112, "linear.epochs": None}, ["data.image_size=64"])
    assert cfg.data.image_size == 64 and cfg.linear.epochs == 200  # None flags are not set
    path = write_eval_config(cfg, tmp_path / "config.yaml")
    assert load_eval_config(path) == cfg
    assert load_eval_config(None, overrides=["linear.learning_rates=[1e-3, 1]"]).linear.learning_rates == [1e-3, 1.0]


def test_all_problems_are_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("linaer:\n  epochs: 3\nknn:\n  ks: [a]\n  temprature: 0.1\nmodel:\n  in_chans: 2\n")
    with pytest.raises(ConfigError) as err:
        load_eval_config(bad)
    msg = str(err.value)
    assert "unknown key 'linaer.epochs' (did you mean 'linear.epochs'?)" in msg
    assert "unknown key 'knn.temprature' (did you mean 'knn.temperature'?)" in msg
    assert "knn.ks: expected a list of int" in msg and "model.in_chans: expected one of 1, 3 or null" in msg
    (tmp_path / "flat.yaml").write_text("epochs: 3\nlinear: 5\n")
    with pytest.raises(ConfigError) as err:
        load_eval_config(tmp_path / "flat.yaml")
    assert "unknown key 'epochs' (did you mean 'linear.epochs'?)" in str(err.value)
    assert f"linear: expected a mapping of keys, got 5 ({tmp_path / 'flat.yaml'})" in str(err.value)


def test_every_numeric_option_has_a_range_and_the_defaults_are_valid():
    schema = eval_schema()
    missing = schema.unbounded_numbers()
    assert not missing, f"add a range (or choices) to the field of {missing} in dinov3_us/eval/config.py"
    assert schema.keys["knn.temperature"].range is not None and "model.in_chans" not in missing  # choices (1, 3)
    check_eval_config(EvalConfig())  # the defaults are in range
    check_eval_config(load_eval_config(PROTOCOL))
    cfg = EvalConfig()
    cfg.knn.temperature = -1.0
    with pytest.raises(ConfigError, match="knn.temperature: expected > 0, got -1.0"):
        check_eval_config(cfg)


def test_arch_names_come_from_the_model_table():
    assert eval_schema().keys["model.arch"].choices is ARCHS
    with pytest.raises(ConfigError, match="model.arch: expected one of 'vit_test', .* or null, got 'vit_huge'"):
        load_eval_config(None, overrides=["model.arch=vit_huge"])
    assert load_eval_config(None, {"model.arch": "vit_small"}).model.arch == "vit_small"


@pytest.mark.parametrize(
    "override, message",
    [
        ("linear.learning_rates=[0.1,-1]", "linear.learning_rates: expected every value > 0, got [0.1, -1.0]"),
        ("linear.learning_rates=[]", "linear.learning_rates: expected at least one value"),
        ("knn.ks=[0,10]", "knn.ks: expected every value >= 1"),
        ("knn.temperature=0", "knn.temperature: expected > 0, got 0.0"),
        ("finetune.drop_path_rate=1", "finetune.drop_path_rate: expected in [0, 1), got 1.0"),
        ("finetune.lr=-1e-4", "finetune.lr: expected > 0, got -0.0001"),
        ("finetune.crop_scale=[0.9,0.5]", "finetune.crop_scale: expected [min, max] with min <= max"),
        ("finetune.hflip=1.5", "finetune.hflip: expected in [0, 1], got 1.5"),
        ("linear.label_fractions=[0,0.5]", "linear.label_fractions: expected every value in (0, 1]"),
        ("linear.patience=0", "linear.patience: expected >= 1, got 0"),
        ("data.batch_size=0", "data.batch_size: expected >= 1, got 0"),
        ("data.label_bins=1", "data.label_bins: expected >= 2, got 1"),
        ("data.std=[0]", "data.std: expected every value > 0"),
        ("report.ci=1", "report.ci: expected in (0, 1), got 1.0"),
        ("segmentation.foreground_threshold=0", "segmentation.foreground_threshold: expected in [1, 255], got 0"),
        ("finetune.warmup_epochs=31", "finetune.warmup_epochs: expected <= finetune.epochs (30), got 31"),
    ],
)
def test_a_value_out_of_range_names_the_option_and_the_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_eval_config(None, overrides=[override])
    assert message in str(err.value) and str(err.value).count("\n") == 1


def test_range_and_type_problems_of_every_layer_in_one_error(tmp_path):
    f = tmp_path / "eval.yaml"
    f.write_text("knn:\n  temperature: -1\nlinear:\n  epochs: many\n")
    with pytest.raises(ConfigError) as err:
        load_eval_config(f, {"data.image_size": 0}, ["data.resize_mode=center_crop", "data.resize_size=100",
                                                     "model.in_chans=1", "data.mean=[0.5,0.5,0.5]"])
    msg = str(err.value)
    assert f"linear.epochs: expected int, got 'many' ({f})" in msg
    assert "knn.temperature: expected > 0" in msg and "data.image_size: expected >= 1, got 0" in msg
    assert "data.mean: expected 1 values (model.in_chans)" in msg
    assert "data.resize_size" not in msg  # image_size is itself out of range: the crop rule is not run
    f.write_text("knn:\n  temperature: -1\n")
    assert load_eval_config(f, {"knn.temperature": 0.1}).knn.temperature == 0.1  # ranges apply to the merged config
    with pytest.raises(ConfigError, match="data.resize_size: expected >= data.image_size"):
        load_eval_config(None, overrides=["data.resize_mode=center_crop", "data.resize_size=100"])
