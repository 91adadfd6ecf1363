"""Every preset in configs/train/ validates and says what it is meant for (pool size, budget)."""

from pathlib import Path

import pytest

from dinov3_us.configs import load_config

PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.yaml"))


def test_the_presets_are_found():
    assert {p.name for p in PRESETS} >= {"tiny_cpu.yaml", "small_cpu.yaml", "vits16_smalldata.yaml",
                                          "vitb16_smalldata.yaml", "vits16_fetalus.yaml", "vitb16_fetalus.yaml"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_each_preset_validates_and_states_pool_and_budget(path):
    cfg = load_config(str(path))
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "Meant for:" in header and "budget" in header, f"{path.name}: say the pool size and budget in the header"
    assert cfg.train.selfdistill_alarm_iterations >= 0
    iterations = cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH
    assert iterations > cfg.optim.warmup_epochs * cfg.train.OFFICIAL_EPOCH_LENGTH


@pytest.mark.parametrize("name", ["vits16_smalldata.yaml", "vitb16_smalldata.yaml", "small_cpu.yaml"])
def test_the_small_data_presets_carry_the_decisive_knob(name):
    cfg = load_config(str(next(p for p in PRESETS if p.name == name)))
    assert cfg.teacher.teacher_temp == cfg.teacher.warmup_teacher_temp == 0.01  # the knob the bench found decisive
    assert cfg.dino.head_norm_last_layer and cfg.optim.freeze_last_layer_epochs == 0
    assert cfg.student.layerscale == 0.1 and cfg.dino.head_n_prototypes <= 4096
