"""Value ranges and cross-key rules: every numeric key has a range, and a bad value fails in `load_config`."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dinov3_us.configs import get_default_config, load_config
from dinov3_us.configs.config import DEFAULT_CONFIG_PATH, check_config, flatten, pretrain_schema
from dinov3_us.configs.schema import Range
from dinov3_us.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = flatten(yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()))


def test_every_numeric_key_has_a_range():
    schema = pretrain_schema()
    missing = schema.unbounded_numbers()
    assert not missing, f"add a range (or choices) to dinov3_us/configs/keys.py KEYS for {missing}"
    assert "optim.lr" in schema.keys and schema.keys["optim.lr"].range is not None  # a number with a range is found
    assert "gram.max_updates" not in missing and schema.keys["crops.rgb_std"].range is not None
    assert all(len(DEFAULTS[key]) == 2 for key, spec in schema.keys.items() if spec.order)


def test_the_defaults_are_in_range():
    for key, spec in pretrain_schema().keys.items():
        value = DEFAULTS[key]
        values = value if isinstance(value, list) else [] if value is None else [value]
        assert spec.range is None or all(v in spec.range for v in values), f"{key}={value} is not {spec.range}"
    check_config(get_default_config())


def test_range_wording():
    assert str(Range(0, 1)) == "in [0, 1]" and str(Range(0, 1, high_open=True)) == "in [0, 1)"
    assert str(Range(0, low_open=True)) == "> 0" and str(Range(1)) == ">= 1" and str(Range(1e-3)) == ">= 0.001"
    assert float("nan") not in Range(0, 1) and 0 not in Range(0, low_open=True) and 1 in Range(1)


@pytest.mark.parametrize(
    "override, message",
    [  # the tester's reports: each used to train silently or die with a raw traceback
        ("optim.lr=-0.01", "optim.lr: expected > 0, got -0.01"),
        ("teacher.momentum_teacher=1.5", "teacher.momentum_teacher: expected in [0, 1], got 1.5"),
        ("optim.weight_decay=-1", "optim.weight_decay: expected >= 0, got -1"),
        ("student.drop_path_rate=2", "student.drop_path_rate: expected in [0, 1), got 2"),
        ("optim.warmup_epochs=-1", "optim.warmup_epochs: expected >= 0, got -1"),
        ("crops.global_crops_size=0", "crops.global_crops_size: expected >= 1, got 0"),
        ("train.batch_size_per_gpu=0", "train.batch_size_per_gpu: expected >= 1, got 0"),
        ("ibot.mask_ratio_min_max=[0.1,1.5]", "ibot.mask_ratio_min_max: expected every value in [0, 1], got [0.1, 1."),
        ("ibot.mask_ratio_min_max=[0.5,0.1]", "ibot.mask_ratio_min_max: expected [min, max] with min < max"),
        ("ibot.mask_sample_probability=1.2", "ibot.mask_sample_probability: expected in [0, 1], got 1.2"),
        ("teacher.teacher_temp=0", "teacher.teacher_temp: expected > 0, got 0"),
        ("optim.epochs=0", "optim.epochs: expected >= 1, got 0"),
        ("optim.adamw_beta2=1.0", "optim.adamw_beta2: expected in [0, 1), got 1.0"),
        ("optim.layerwise_decay=0", "optim.layerwise_decay: expected in (0, 1], got 0"),
        ("crops.local_crops_number=0", "crops.local_crops_number: expected >= 1, got 0"),
        ("crops.global_crops_scale=[0.9,0.3]", "crops.global_crops_scale: expected [min, max] with min <= max"),
        ("crops.local_crops_scale=[0,0.3]", "crops.local_crops_scale: expected every value in (0, 1]"),
        ("crops.rgb_std=[0.2,0.2,0]", "crops.rgb_std: expected every value > 0"),
        ("crops.rgb_mean=[0.5,0.5]", "crops.rgb_mean: expected 3 values"),
        ("gram.it_load_ema_teacher=-2", "gram.it_load_ema_teacher: expected >= -1, got -2"),
        ("gram.max_updates=-1", "gram.max_updates: expected >= 0, got -1"),
        ("student.pos_embed_rope_jitter_coords=0.5", "student.pos_embed_rope_jitter_coords: expected >= 1"),
        ("data.pool_weights=[1,-1]", "data.pool_weights: expected every value >= 0"),
        ("augment.blur_p_local=-0.1", "augment.blur_p_local: expected in [0, 1], got -0.1"),
        ("augment.gamma_range=[0,1]", "augment.gamma_range: expected every value >= 0.001"),
        ("checkpointing.period=0", "checkpointing.period: expected >= 1, got 0"),
        ("train.log_period=0", "train.log_period: expected >= 1, got 0"),
        ("optim.lr=.nan", "optim.lr: expected > 0, got nan"),
    ],
)
def test_a_value_out_of_range_names_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert str(err.value).count("\n") == 1, "one problem, one line"


@pytest.mark.parametrize(
    "override",
    ["optim.lr=1e-9", "teacher.momentum_teacher=1.0", "teacher.momentum_teacher=0", "student.drop_path_rate=0",
     "student.layerscale=0", "optim.clip_grad=0", "optim.warmup_epochs=0", "optim.min_lr=0", "dino.koleo_loss_weight=0",
     "ibot.mask_ratio_min_max=[0,1]", "gram.it_load_ema_teacher=-1", "evaluation.eval_period_iterations=0",
     "crops.global_crops_scale=[1.0,1.0]", "train.num_workers=0", "gram.max_updates=null"],
)
def test_the_ends_of_the_ranges_are_accepted(override):
    key, value = override.split("=", 1)
    expected = yaml.safe_load(value)
    if isinstance(expected, str):  # YAML 1.1 reads `1e-9` (no dot) as a string; the loader makes it the key's float
        expected = float(expected)
    assert flatten(load_config(None, [override]))[key] == expected


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.epochs=5", "teacher.warmup_teacher_temp_epochs=2", "optim.warmup_epochs=6"],
         "optim.warmup_epochs: expected <= optim.epochs (5), got 6"),
        (["optim.epochs=10", "optim.warmup_epochs=1", "optim.freeze_last_layer_epochs=11"],
         "optim.freeze_last_layer_epochs: expected <= optim.epochs (10), got 11"),
        (["crops.global_crops_size=100"], "crops.global_crops_size: expected a multiple of student.patch_size (16)"),
        (["student.patch_size=14"], "crops.local_crops_size: expected a multiple of student.patch_size (14)"),
        (["crops.gram_teacher_crops_size=50"], "crops.gram_teacher_crops_size: expected a multiple"),
        (["schedules.enabled=true", "optim.epochs=20", "optim.warmup_epochs=1", "teacher.warmup_teacher_temp_epochs=1"],
         "schedules.teacher_temp: schedules.teacher_temp.warmup_epochs (30) must be <= optim.epochs (20)"),
        (["schedules.enabled=true", "schedules.lr.cosine_epochs=95"], "schedules.lr: schedules.lr.warmup_epochs (10) "
                                                                      "+ schedules.lr.cosine_epochs (95)"),
        (["crops.localcrops_subset_of_globalcrops=true", "crops.local_crops_number=3"], "needs an even"),
        (["dino.koleo_topk=2"], "dino.koleo_topk: 2 > 1 needs dino.koleo_loss_distributed=true"),
        (["ibot.separate_head=false"], "ibot.separate_head=false is not supported"),
        (["student.pos_embed_rope_min_period=1"], "set both or neither"),
        (["student.pos_embed_rope_min_period=1", "student.pos_embed_rope_max_period=10"],
         "set student.pos_embed_rope_base=null"),
        (["student.pos_embed_rope_base=null"], "student.pos_embed_rope_base: null needs"),
        (["data.pool_weights=[0,0]"], "data.pool_weights: expected at least one weight > 0"),
        (["gram.use_loss=true"], "gram.use_loss needs gram.ckpt"),
        (["gram.use_loss=true", "gram.it_load_ema_teacher=0"], "needs crops.gram_teacher_crops_size"),
    ],
)
def test_cross_key_rules(overrides, message):
    with pytest.raises(ConfigError, match="invalid configuration") as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_rope_periods_instead_of_the_base():
    cfg = load_config(None, ["student.pos_embed_rope_base=null", "student.pos_embed_rope_min_period=0.5",
                             "student.pos_embed_rope_max_period=100"])
    assert cfg.student.pos_embed_rope_base is None and cfg.student.pos_embed_rope_max_period == 100


def test_every_problem_in_one_error_and_rules_skip_invalid_keys(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("optim:\n  lr: -1\n  epochs: 0\nstudent:\n  patch_size: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, ["teacher.momentum_teacher=2", "crops.local_crops_size=100", "student.arch=huge",
                        "train.seed=x"])
    lines = [line.strip() for line in str(err.value).splitlines()[1:]]
    assert len(lines) == 6, lines  # arch, seed (types); lr, epochs, patch_size, momentum (ranges)
    for key in ("student.arch", "train.seed", "optim.lr", "optim.epochs", "student.patch_size",
                "teacher.momentum_teacher"):
        assert sum(line.startswith(key) for line in lines) == 1, key
    assert "multiple of student.patch_size" not in str(err.value)  # patch_size is itself invalid: no modulo by 0
    assert "warmup" not in str(err.value)  # optim.epochs is invalid: the warmup <= epochs rules wait for a valid one


def test_a_later_layer_fixes_an_earlier_value(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("optim:\n  lr: -1\n")
    assert load_config(f, ["optim.lr=0.002"]).optim.lr == 0.002  # ranges apply to the merged config


def test_check_config_on_a_config_built_elsewhere():
    cfg = get_default_config()
    cfg.optim.lr = -0.5
    cfg.crops.local_crops_size = 100
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    msg = str(err.value)
    assert "optim.lr: expected > 0" in msg and "crops.local_crops_size: expected a multiple" in msg


@pytest.mark.slow
def test_train_cli_refuses_a_bad_value_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--config-file",
                           str(REPO / "configs" / "train" / "tiny_cpu.yaml"), "--output-dir", str(out),
                           "optim.lr=-0.01", "teacher.momentum_teacher=1.5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("error") == 1
    assert "optim.lr: expected > 0, got -0.01" in proc.stderr
    assert "teacher.momentum_teacher: expected in [0, 1], got 1.5" in proc.stderr
    assert not out.exists() or not any(out.iterdir())
