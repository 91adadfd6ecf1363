"""The interop front door end to end: a run's checkpoint exported to every format by tools/convert_checkpoint.py,
read back by format detection, evaluated, and used as initial pretraining weights: the same backbone each time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dinov3_us.eval.backbone import load_eval_backbone
from dinov3_us.weights import read_backbone

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("safetensors")
pytestmark = pytest.mark.slow  # the tiny_run fixture is a subprocess pretraining; each test converts in one


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run


def convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools/convert_checkpoint.py"), *args], capture_output=True,
                          text=True, timeout=300)


def test_every_format_reads_back_to_the_same_backbone(run, tmp_path):
    official = convert(str(run), "--output", str(tmp_path / "teacher.pth"))
    assert official.returncode == 0, official.stderr
    reference, arch, fmt = read_backbone(tmp_path / "teacher.pth")
    assert fmt == "official" and arch == json.loads((tmp_path / "teacher.json").read_text())["arch"]
    for fmt_name, output in (("hf", tmp_path / "hf"), ("timm", tmp_path / "timm.pth")):
        proc = convert(str(run), "--format", fmt_name, "--output", str(output))
        assert proc.returncode == 0, proc.stderr
        state, arch_back, found = read_backbone(output)
        assert found == fmt_name and arch_back == arch
        assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in reference)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "iteration" in card.lower() and str(run) in card
    again = convert(str(tmp_path / "hf"), "--format", "official", "--output", str(tmp_path / "back.pth"))
    assert again.returncode == 0, again.stderr
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert all(torch.equal(back[k], reference[k]) for k in reference)


def test_eval_and_pretraining_take_an_hf_folder(run, tmp_path, phantom_shards):
    assert convert(str(run), "--format", "hf", "--output", str(tmp_path / "hf")).returncode == 0
    assert convert(str(run), "--output", str(tmp_path / "teacher.pth")).returncode == 0
    hf = load_eval_backbone(tmp_path / "hf", img_size=32)
    official = load_eval_backbone(tmp_path / "teacher.pth", img_size=32)
    x = torch.randn(2, official.model.in_chans, 32, 32)
    with torch.no_grad():
        a, b = hf.model.forward_features(x), official.model.forward_features(x)
    assert torch.equal(a["x_norm_clstoken"], b["x_norm_clstoken"]) and hf.kind == "hf"
    out = tmp_path / "from_hf"
    cmd = [sys.executable, str(REPO / "tools/train.py"), "--config-file", str(REPO / "configs/train/tiny_cpu.yaml"),
           "--output-dir", str(out), f"train.dataset_path={phantom_shards}:train", "optim.epochs=1",
           "train.OFFICIAL_EPOCH_LENGTH=1", f"student.pretrained_weights={tmp_path / 'hf'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Hugging Face transformers DINOv3 checkpoint" in (out / "log.txt").read_text()
