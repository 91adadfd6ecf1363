"""`make demo`'s script runs end to end and writes what the README says."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_demo_writes_config_summary_and_picture(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--output-dir", str(out),
                           "crops.global_crops_size=64"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "demo.json", "patch_pca.png"]
    summary = json.loads((out / "demo.json").read_text())
    assert summary["shapes"]["x_norm_patchtokens"] == [1, 16, 384]
    assert summary["shapes"]["x_storage_tokens"] == [1, 4, 384]
    assert yaml.safe_load((out / "config.yaml").read_text())["crops"]["global_crops_size"] == 64


def test_demo_rejects_a_typo_with_a_suggestion(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--output-dir", str(tmp_path),
                           "crops.global_crop_size=64"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "did you mean 'crops.global_crops_size'" in proc.stderr
