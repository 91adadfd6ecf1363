"""Evaluation config: the study's protocol file is valid, precedence is file < flags < overrides, typos are named."""

from pathlib import Path

import pytest

from dinov3_us.errors import ConfigError
from dinov3_us.eval.config import OFFICIAL_LEARNING_RATES, load_eval_config, write_eval_config

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
    (tmp_path / "flat.yaml").write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_eval_config(tmp_path / "flat.yaml")
