"""Config loading: precedence, validation with suggestions, presets, the print CLI."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dinov3_us.configs import get_default_config, load_config, write_config
from dinov3_us.configs.__main__ import main
from dinov3_us.configs.config import CHOICES, DEFAULT_CONFIG_PATH, flatten, pretrain_schema, yaml_docs
from dinov3_us.configs.keys import KEYS
from dinov3_us.configs.schema import Key, Schema, value_problem
from dinov3_us.errors import ConfigError
from dinov3_us.models import ARCHS

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
        ("student.arch=vit_huge", "student.arch: expected one of 'vit_test', "),
        ("student.in_chans=2", "student.in_chans: expected one of 1, 3, got 2"),
        ("student.in_chans=true", "student.in_chans: expected one of 1, 3, got True"),
        ("monitor.probes=[knn,kmeans]", "monitor.probes: expected a list of values among 'knn', 'linear'"),
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


def test_every_key_is_declared_once_and_its_default_is_valid():
    defaults = flatten(yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()))
    schema = pretrain_schema()  # building it fails on a null or [] default whose type is not declared
    assert list(schema.keys) == list(defaults) and set(KEYS) <= set(defaults)
    for key, spec in schema.keys.items():
        assert value_problem(key, spec, defaults[key]) == (defaults[key], None), key
    assert schema.keys["gram.max_updates"].type == int | None and schema.keys["data.pool_weights"].type == list[float]
    with pytest.raises(TypeError, match="a.b: a null or empty-list default needs a declared type"):
        Schema.from_defaults({"a.b": None}, {})
    with pytest.raises(TypeError, match="declared keys without a default"):
        Schema.from_defaults({"a.b": 1}, {"a.c": Key(range=None)})


def test_arch_names_come_from_the_model_table():
    assert CHOICES["student.arch"] is ARCHS
    ARCHS["vit_registered_here"] = ARCHS["vit_test"]  # what bench_vs_official does for its own size
    try:
        assert load_config(overrides=["student.arch=vit_registered_here"]).student.arch == "vit_registered_here"
    finally:
        del ARCHS["vit_registered_here"]


def test_empty_sections_set_nothing_and_a_scalar_section_is_named(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("gram:\noptim: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value).splitlines()[1:] == [f"  optim: expected a mapping of keys, got 3 ({f})"]


def test_write_config_roundtrip(tmp_path):
    cfg = load_config(overrides=["student.arch=vit_test", "optim.lr=0.01"])
    path = write_config(cfg, tmp_path / "out")
    assert path.name == "config.yaml"
    again = load_config(path)
    assert again == cfg
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_shipped_presets_validate():
    presets = [p for p in sorted((REPO / "configs").rglob("*.yaml")) if "eval" not in p.parts]
    assert presets, f"no pretraining preset found under {REPO / 'configs'}"
    for preset in presets:
        loaded = flatten(load_config(preset))
        for key, value in flatten(yaml.safe_load(preset.read_text())).items():  # every key it sets is kept as set
            assert loaded[key] == value, f"{preset.name}: {key}"


@pytest.mark.slow
def test_print_cli(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "dinov3_us.configs", "student.arch=vit_small"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and yaml.safe_load(ok.stdout)["student"]["arch"] == "vit_small"
    bad = subprocess.run([sys.executable, "-m", "dinov3_us.configs", "student.arhc=vit_small"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'student.arch'" in bad.stderr


def test_keys_lists_every_key_with_its_type_default_valid_values_and_doc(capsys):
    assert main(["--keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(flatten(yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())))
    assert "optim.lr: float = 0.001, > 0" in lines
    assert "gram.max_updates: int or null = None, >= 0  # maximum number of Gram-teacher refreshes (null: unlimited)" \
        in lines
    monitor = next(line for line in lines if line.startswith("monitor.dataset: "))
    assert monitor.endswith("when it has labels; none: off")  # a comment continued on the next line


def test_yaml_docs_follow_sections_and_continued_comments():
    text = "a:  # section\n  b: 1  # the b\n       # and more\n  c:\n    d: x # the d\ne: 2\n"
    assert yaml_docs(text) == {"a.b": "the b and more", "a.c.d": "the d", "e": ""}


@pytest.mark.parametrize("how", ["head", "close"])
@pytest.mark.slow
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


def test_a_key_added_since_the_run_started_is_no_difference_at_its_default():
    """A run folder's config.yaml written before a key existed resumes when the key keeps its default."""
    from dinov3_us.configs.config import config_differences

    new = load_config(None, []).to_dict()
    old = copy.deepcopy(new)
    del old["evaluation"]["teacher_checkpoint"]  # written by an earlier version
    assert config_differences(old, new) == []
    changed = load_config(None, ["evaluation.teacher_checkpoint=latest"]).to_dict()
    assert config_differences(old, changed) == ["evaluation.teacher_checkpoint: '<absent>' -> 'latest'"]
    old["optim"]["lr"] = 1.0  # a real change stays one
    assert config_differences(old, new) == [f"optim.lr: 1.0 -> {new['optim']['lr']!r}"]


@pytest.mark.parametrize("dataset", ["none", "NONE"])  # "off" would be YAML false: a type error
def test_best_teacher_checkpoint_without_the_monitor_is_refused_at_load_time(dataset):
    with pytest.raises(ConfigError, match="evaluation.teacher_checkpoint: 'best' needs the downstream monitor"):
        load_config(None, ["evaluation.teacher_checkpoint=best", f"monitor.dataset={dataset}"])
    load_config(None, ["evaluation.teacher_checkpoint=best", "monitor.dataset=auto"])  # the monitor is on
    load_config(None, ["evaluation.teacher_checkpoint=auto", f"monitor.dataset={dataset}"])
