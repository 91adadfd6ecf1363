"""tools/convert_checkpoint.py: a DCP training checkpoint -> the official-format teacher backbone, strictly."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dinov3_us.checkpointer import CheckpointManager
from dinov3_us.checkpointer.checkpointer import MARKER
from dinov3_us.errors import CheckpointError
from dinov3_us.eval.backbone import load_eval_backbone
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.run_dir import RunDir
from dinov3_us.weights import load_backbone_weights
from dinov3_us.weights.checkpoint import convert_checkpoint, write_run_teacher
from dinov3_us.weights.resolve import resolve_weights

REPO = Path(__file__).resolve().parents[2]
# every test reads a subprocess pretraining (the tiny_run fixture) or converts in a subprocess
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run


def test_cli_converts_the_teacher_exactly_as_exported(run_dir, tmp_path):
    out = tmp_path / "teacher.pth"
    proc = subprocess.run([sys.executable, str(REPO / "tools/convert_checkpoint.py"), str(run_dir / "ckpt" / "3"),
                           "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    converted = torch.load(out, weights_only=True)
    exported = torch.load(run_dir / "eval" / "training_3" / "teacher_checkpoint.pth", weights_only=True)
    assert converted.keys() == exported.keys()
    assert all(torch.equal(converted[k], exported[k]) for k in exported)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["iteration"] == 3 and meta["which"] == "teacher"
    model = DinoVisionTransformer(**meta["arch"])
    load_backbone_weights(model, out)  # strict, no extra flags
    assert not any(k.startswith(("teacher.", "backbone.", "model.")) for k in converted)  # official key format


def test_student_safetensors_and_heads(run_dir, tmp_path):
    out = convert_checkpoint(run_dir / "ckpt" / "3", tmp_path / "student.safetensors", which="student", heads=True)
    student = load_file(out)
    assert "blocks.0.attn.qkv.weight" in student
    heads = torch.load(tmp_path / "student_heads.pth", weights_only=True)
    assert {k.split(".")[0] for k in heads} == {"dino_head", "ibot_head"}


def test_mismatching_config_and_incomplete_checkpoint_are_errors(run_dir, tmp_path):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text((run_dir / "config.yaml").read_text().replace("n_storage_tokens: 2", "n_storage_tokens: 4"))
    with pytest.raises(CheckpointError, match="storage_tokens"):
        convert_checkpoint(run_dir / "ckpt" / "3", tmp_path / "t.pth", config_file=wrong)
    broken = tmp_path / "ckpt" / "9"
    broken.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        convert_checkpoint(broken, tmp_path / "t.pth", config_file=run_dir / "config.yaml")


def _convert_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools/convert_checkpoint.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_a_run_folder_stands_for_its_latest_checkpoint(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    proc = _convert_cli(run / "ckpt" / "7", "--output", tmp_path / "t.pth")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"no such checkpoint {run / 'ckpt' / '7'}; available: 1, 3" in proc.stderr and MARKER not in proc.stderr
    (run / "teacher.pth").unlink()  # the one the trainer wrote
    proc = _convert_cli(run)  # a run folder without a best checkpoint: its latest complete one -> OUT/teacher.pth
    assert proc.returncode == 0, proc.stderr
    assert f"is a run folder: its latest complete checkpoint {run / 'ckpt' / '3'}" in proc.stderr
    meta = json.loads((run / "teacher.json").read_text())
    assert meta["iteration"] == 3 and meta["which"] == "teacher"
    exported = torch.load(run_dir / "eval" / "training_3" / "teacher_checkpoint.pth", weights_only=True)
    converted = torch.load(run / "teacher.pth", weights_only=True)
    assert all(torch.equal(converted[k], exported[k]) for k in exported)
    proc = _convert_cli(run, "--which", "student")
    assert proc.returncode == 2 and "--which student needs --output" in proc.stderr


def test_eval_takes_a_run_or_checkpoint_folder_once_converted(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert load_eval_backbone(run, img_size=32).weights == str(run / "teacher.pth")  # the trainer wrote it
    for name in ("teacher.pth", "teacher.json"):  # as a run that has not completed yet
        (run / name).unlink()
    with pytest.raises(CheckpointError, match=f"{run} is a run folder without its converted teacher: convert it "
                                              f"first with tools/convert_checkpoint.py {run / 'ckpt' / '3'}$"):
        load_eval_backbone(run, img_size=32)
    with pytest.raises(CheckpointError, match="checkpoint folder without its converted teacher: convert it first"):
        load_eval_backbone(run / "ckpt" / "3", img_size=32)
    with pytest.raises(CheckpointError, match="is a folder, not a weights file"):
        load_eval_backbone(run / "tb", img_size=32)
    proc = subprocess.run([sys.executable, str(REPO / "tools/eval_knn.py"), "--pretrained-weights", str(run),
                           "--output-dir", str(tmp_path / "knn")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is a run folder without its converted teacher" in proc.stderr
    convert_checkpoint(run / "ckpt" / "3", run / "teacher.pth")
    for weights in (run, run / "ckpt" / "3"):
        backbone = load_eval_backbone(weights, img_size=32)
        assert backbone.weights == str(run / "teacher.pth") and backbone.kind == "exported"
    with pytest.raises(CheckpointError, match=r"teacher.pth holds iteration 3\): convert it first"):
        load_eval_backbone(run / "ckpt" / "1", img_size=32)


def test_one_resolver_for_every_kind_of_path(run_dir, tmp_path):
    """`resolve_weights`: a file, a run folder (the checkpoint `select` picks), a checkpoint folder; one error each."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    teacher = resolve_weights(run / "teacher.pth")
    assert (teacher.file, teacher.checkpoint, teacher.run) == (run / "teacher.pth", None, None)
    found = resolve_weights(run)  # auto: no best marked, so the final checkpoint, which teacher.pth holds
    assert (found.file, found.checkpoint, found.run.root) == (run / "teacher.pth", run / "ckpt" / "3", run)
    assert resolve_weights(run, "latest") == found and resolve_weights(run / "ckpt" / "3").file == run / "teacher.pth"
    earlier = resolve_weights(run / "ckpt" / "1")  # not converted: the converter converts it, an evaluation refuses it
    assert (earlier.file, earlier.checkpoint) == (None, run / "ckpt" / "1")
    with pytest.raises(CheckpointError, match=r"without its converted teacher \(.*holds iteration 3\)"):
        earlier.require_file()
    bad = {tmp_path / "nothing": "weights file or folder .*nothing does not exist",
           run / "ckpt" / "5": "no such checkpoint .*; available: 1, 3",
           run / "tb": "is a folder, not a weights file"}
    for path, message in bad.items():
        with pytest.raises(CheckpointError, match=message):
            resolve_weights(path)
    with pytest.raises(CheckpointError, match="has no best checkpoint"):
        resolve_weights(run, "best")
    with pytest.raises(CheckpointError, match=r"no best checkpoint in .*\(evaluation.teacher_checkpoint=best\)"):
        write_run_teacher(RunDir(run), "best")  # a run that asks for its best without a monitor: one line, at the end
    with pytest.raises(CheckpointError, match="needs a run folder, not a checkpoint"):
        resolve_weights(run / "ckpt" / "3", "best")
    with pytest.raises(CheckpointError, match="holds no training checkpoint to convert"):
        convert_checkpoint(run / "teacher.pth", tmp_path / "t.pth")
    CheckpointManager(run / "ckpt", period=1, max_to_keep=5, keep_every=0).mark_best(1, {"metric": "monitor_knn",
                                                                                        "score": 0.5})
    assert resolve_weights(run).checkpoint == run / "ckpt" / "1"  # auto: the best where one is marked
    assert resolve_weights(run).file is None and resolve_weights(run, "latest").file == run / "teacher.pth"
    write_run_teacher(RunDir(run))  # what the trainer does at the end: the best -> teacher.pth
    meta = json.loads((run / "teacher.json").read_text())
    assert meta["iteration"] == 1 and meta["selected"].startswith("the best checkpoint on the downstream monitor")
    assert resolve_weights(run).file == run / "teacher.pth"
