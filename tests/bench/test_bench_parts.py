"""bench/bench_step_parts.py and bench/bench_attention.py, run small as subprocesses: finite numbers, the pick."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each runs a bench script in a subprocess

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "bench" / script), *args], capture_output=True, text=True,
                          cwd=REPO_ROOT)


def test_step_parts_agree_with_the_official_formulas(tmp_path):
    out = tmp_path / "parts.json"
    proc = _run("bench_step_parts.py", "--rows", "24", "--prototypes", "256", "--repeats", "1", "--arch", "vit_test",
                "--output", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"sinkhorn_knopp_float32", "sinkhorn_knopp_bfloat16", "soft_cross_entropy_fwd_bwd_float32",
                            "soft_cross_entropy_fwd_bwd_bfloat16", "drop_path_gather_fwd_bwd_float32",
                            "drop_path_gather_fwd_bwd_bfloat16", "adamw_step"}
    for name, row in results.items():
        assert all(math.isfinite(s) and s > 0 for s in row["seconds"].values()), name
    assert results["sinkhorn_knopp_float32"]["max_abs_diff"] < 1e-5
    assert results["soft_cross_entropy_fwd_bwd_float32"]["max_abs_grad_diff"] < 1e-5
    for dtype in ("float32", "bfloat16"):  # the same rows gathered: the same gradients, bit for bit
        assert results[f"drop_path_gather_fwd_bwd_{dtype}"]["max_abs_grad_diff"] == 0
    assert _run("bench_step_parts.py", "--repeats", "0", "--output", str(out)).returncode == 2


def test_attention_bench_reports_every_backend_and_auto_pick(tmp_path):
    out = tmp_path / "attention.json"
    proc = _run("bench_attention.py", "--repeats", "1", "--output", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["results"]
    assert {r["dtype"] for r in rows} == {"bfloat16", "float32"}
    for row in rows:
        assert set(row["seconds"]) == {"sdpa", "matmul"} and all(s > 0 for s in row["seconds"].values())
        assert row["auto_picks"] == ("matmul" if row["dtype"] == "bfloat16" else "sdpa")
        tol = 0.1 if row["dtype"] == "bfloat16" else 1e-4
        assert max(row["max_abs_error_vs_float64"].values()) < tol
