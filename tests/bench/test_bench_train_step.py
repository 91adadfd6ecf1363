"""bench/bench_train_step.py, run as a subprocess on the tiny recipe: numbers are finite, bad flags are exit 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "bench_train_step.py"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=os.environ | (env or {}))


@pytest.mark.slow
def test_tiny_recipe_reports_the_shipped_config_with_finite_numbers(tmp_path):
    out = tmp_path / "train_step.json"
    proc = _run("--configs", "tiny", "--warmup", "2", "--steps", "2", "--output", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["results"]
    assert [r["param_dtype"] for r in rows] == ["fp32", "bf16"]
    for row in rows:
        assert row["config"] == "configs/train/tiny_cpu.yaml" and row["warmup"] == 2 and row["steps"] == 2
        assert row["clip_grad"] > 0 and row["in_chans"] == 1  # as shipped, not overridden
        spread = row["seconds_per_step"]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"]
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("images_per_second", "mfu", "gflops_per_image"))
    assert 0 < rows[1]["backbone_share_of_bf16_matmul"] and rows[1]["backbone_gflop"] > 0


@pytest.mark.slow
def test_compile_adds_a_compiled_row_per_pair(tmp_path):
    out = tmp_path / "train_step.json"
    proc = _run("--configs", "tiny", "--dtypes", "fp32", "--compile", "--warmup", "2", "--steps", "1",
                "--output", str(out), env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["results"]
    assert [(r["param_dtype"], r["compile"]) for r in rows] == [("fp32", False), ("fp32", True)]
    assert all(math.isfinite(r["images_per_second"]) and r["images_per_second"] > 0 for r in rows)


@pytest.mark.slow
def test_fewer_than_two_warmup_steps_is_a_usage_error(tmp_path):
    proc = _run("--configs", "tiny", "--warmup", "1", "--output", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and "--warmup" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()
