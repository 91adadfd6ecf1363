"""Config loading: precedence, validation with suggestions, presets, the print CLI."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dinov3_us.configs import get_default_config, load_config, write_config
from dinov3_us.configs.config import CHOICES, DEFAULT_CONFIG_PATH, LIST_ITEM_TYPES, NULLABLE_TYPES, flatten
from dinov3_us.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_have_official_names_and_values():
    cfg = get_default_config()
    assert cfg.student.arch == "vit_large"
    assert cfg.student.patch_size == 16
    assert cfg.train.OFFICIAL_EPOCH_LENGTH == 1250
    assert cfg.crops.global_crops_scale == [0.32, 1.0]
    assert cfg.ibot.mask_ratio_min_max == [0.1, 0.5]
    assert cfg.checkpointing.period == 3750
    assert cfg.attention.backend == "auto"


def test_precedence_defaults_file_dotlist(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("student:\n  arch: vit_small\noptim:\n  lr: 0.002\n")
    cfg = load_config(f, ["optim.lr=5e-4", "crops.local_crops_number=6"])
    assert cfg.student.arch == "vit_small"  # from the file
    assert cfg.optim.lr == pytest.approx(5e-4)  # dotlist beats the file; "5e-4" is a float, not a string
    assert cfg.crops.local_crops_number == 6
    assert cfg.optim.epochs == 100  # untouched default


@pytest.mark.parametrize(
    "override, suggestion",
    [("student.archh=vit_small", "student.arch"), ("studnet.arch=vit_small", "student.arch"),
     ("optim.learning_rate=1", None), ("train.batch_size=8", "train.batch_size_per_gpu")],
)
def test_unknown_key_names_it_and_suggests(override, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    key = override.split("=")[0]
    assert f"unknown key {key!r}" in str(err.value)
    if suggestion:
        assert f"did you mean {suggestion!r}" in str(err.value)


def test_unknown_key_in_file_is_an_error(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("crops:\n  local_crop_number: 6\n")
    with pytest.raises(ConfigError, match="crops.local_crops_number"):
        load_config(f)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.lr=fast", "optim.lr: expected float"),
        ("train.batch_size_per_gpu=8.5", "train.batch_size_per_gpu: expected int"),
        ("student.qkv_bias=3", "student.qkv_bias: expected bool"),
        ("crops.global_crops_scale=[0.5]", "expected 2 values"),
        ("crops.global_crops_scale=0.5", "expected a list"),
        ("student.arch=vit_huge", "not one of"),
        ("student.in_chans=2", "not one of"),
        ("gram.max_updates=often", "expected int or null"),
        ("data.pool_weights=[a,b]", "expected a list of float"),
    ],
)
def test_wrong_type_or_value_is_an_error(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        load_config(overrides=[override])


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["optim.lrr=1", "student.arch=nope", "crops.local_crops_size=big"])
    msg = str(err.value)
    assert "optim.lrr" in msg and "student.arch" in msg and "crops.local_crops_size" in msg


def test_int_accepted_for_float_and_null_for_nullable():
    cfg = load_config(overrides=["optim.lr=1", "student.pos_embed_rope_rescale_coords=2", "gram.ckpt=null"])
    assert cfg.optim.lr == 1 and cfg.student.pos_embed_rope_rescale_coords == 2 and cfg.gram.ckpt is None


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["optim.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_schema_tables_match_the_defaults():
    defaults = flatten(yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()))
    nulls = {k for k, v in defaults.items() if v is None}
    assert nulls <= set(NULLABLE_TYPES), "every null default needs a declared type"
    for key in set(NULLABLE_TYPES) - nulls:  # a non-null default that may be set to null: same type
        assert type(defaults[key]) is NULLABLE_TYPES[key], key
    empty_lists = {k for k, v in defaults.items() if v == []}
    assert empty_lists == set(LIST_ITEM_TYPES), "every empty-list default needs a declared item type"
    assert set(CHOICES) <= set(defaults)
    for key, choices in CHOICES.items():
        assert defaults[key] in choices, key


def test_write_config_roundtrip(tmp_path):
    cfg = load_config(overrides=["student.arch=vit_test", "optim.lr=0.01"])
    path = write_config(cfg, tmp_path / "out")
    assert path.name == "config.yaml"
    again = load_config(path)
    assert again == cfg
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_shipped_presets_validate():
    presets = sorted((REPO / "configs").rglob("*.yaml"))
    for preset in presets:
        if "eval" in preset.parts:
            continue
        load_config(preset)


def test_print_cli(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "dinov3_us.configs", "student.arch=vit_small"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and yaml.safe_load(ok.stdout)["student"]["arch"] == "vit_small"
    bad = subprocess.run([sys.executable, "-m", "dinov3_us.configs", "student.arhc=vit_small"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'student.arch'" in bad.stderr


@pytest.mark.parametrize("how", ["head", "close"])
def test_print_cli_into_a_closed_pipe_is_quiet(how):
    cmd = [sys.executable, "-m", "dinov3_us.configs"]
    if how == "head":  # python -m dinov3_us.configs | head -1
        shell = " ".join(cmd) + " | head -1; exit ${PIPESTATUS[0]}"
        proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
        assert proc.stdout == "compute_precision:\n"
        rc, stderr = proc.returncode, proc.stderr
    else:  # read one line, then close the pipe before the rest is written
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        assert proc.stdout.readline() == "compute_precision:\n"
        proc.stdout.close()
        rc, stderr = proc.wait(timeout=60), proc.stderr.read()
        proc.stderr.close()
    assert rc == 0 and "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
