"""bench/bench_vs_official.py, run as a subprocess: argument checks, our side alone, and both sides when the
official checkout is named by DINOV3_OFFICIAL_REPO. Budgeted by iterations (warm-up 2, 1 timed step, 1 round)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "bench_vs_official.py"
SHORT = ["--configs", "T", "--warmup", "2", "--steps", "1", "--rounds", "1"]


def _run(*args: str, tmp_path: Path | None = None) -> subprocess.CompletedProcess:
    """The bench in a subprocess; with `tmp_path`, torch.compile's cache lives there (no folder shared between runs)."""
    env = os.environ | ({"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")} if tmp_path else {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env)


@pytest.mark.parametrize("make_repo", ["missing", "not_dinov3"])
@pytest.mark.slow
def test_invalid_official_repo_is_a_one_line_error(tmp_path, make_repo):
    repo = tmp_path / "nowhere"
    if make_repo == "not_dinov3":
        (repo / "dinov3").mkdir(parents=True)
    out = tmp_path / "out.json"
    proc = _run("--official-repo", str(repo), *SHORT, "--output", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(repo) in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_official_side_without_repo_is_a_one_line_error(tmp_path):
    proc = _run("--side", "official", *SHORT, "--output", str(tmp_path / "out.json"))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--official-repo" in proc.stderr


@pytest.mark.slow
def test_ours_alone_writes_finite_positive_numbers(tmp_path):
    """Our side alone, with the default --compile on: our blocks really went through dynamo."""
    out = tmp_path / "vs_official.json"
    proc = _run("--side", "ours", *SHORT, "--threads", "1", "--output", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["config"] == "T" and list(row["sides"]) == ["ours"]
    side = row["sides"]["ours"]
    numbers = [side["median_s"], side["min_s"], side["max_s"], side["images_per_s"], side["peak_rss_gib"],
               *side["timed_steps"], *side["step0_losses"].values()]
    assert len(side["timed_steps"]) == 1
    assert all(math.isfinite(x) and x > 0 for x in numbers)
    assert report["official_commit"] == "unknown" and report["threads"] == 1 and report["compile"] == "on"
    assert side["compile"]["requested"] and side["compile"]["dynamo_frames_ok"] > 0


@pytest.mark.slow
def test_config_file_and_overrides(tmp_path):
    config = tmp_path / "t.yaml"
    config.write_text("student:\n  arch: vit_test\n  patch_size: 16\ncrops:\n  global_crops_size: 32\n"
                      "  local_crops_size: 16\n  local_crops_number: 2\ntrain:\n  batch_size_per_gpu: 4\n")
    out = tmp_path / "vs_official.json"
    proc = _run("--side", "ours", "--configs", "--config", str(config), "dino.head_n_prototypes=256",
                "ibot.head_n_prototypes=256", "--warmup", "2", "--steps", "1", "--rounds", "1", "--compile", "off",
                "--output", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(out.read_text())["results"]
    assert row["config"] == "t" and row["batch_size"] == 4
    assert row["spec"]["overrides"] == ["dino.head_n_prototypes=256", "ibot.head_n_prototypes=256"]
    assert not row["sides"]["ours"]["compile"]["requested"] and row["sides"]["ours"]["compile"]["dynamo_frames_ok"] == 0
    bad = _run("--side", "ours", "--configs", "--config", str(config), "train.no_such_key=1", "--output", str(out))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no_such_key" in bad.stderr


@pytest.mark.slow
def test_both_sides_agree_at_step_0(tmp_path):
    repo = os.environ.get("DINOV3_OFFICIAL_REPO")
    if not repo:
        pytest.skip("set DINOV3_OFFICIAL_REPO to a facebookresearch/dinov3 checkout to run the official side")
    out = tmp_path / "vs_official.json"
    proc = _run("--official-repo", repo, "--side", "both", *SHORT, "--compile", "off",
                "--output", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(out.read_text())["results"]
    ours, official = row["sides"]["ours"]["step0_losses"], row["sides"]["official"]["step0_losses"]
    assert ours.keys() == official.keys()
    # Same weights, batches, masks and drop-path draws (both sides draw the kept samples of every crop size for
    # attention, then for the MLP, from the same seed): the same losses up to float rounding.
    for key, value in ours.items():
        assert value == pytest.approx(official[key], rel=1e-4), key
    assert row["ratio_ours_over_official"] > 0 and len(row["ratio_per_round"]) == 1


def test_summary_ratio_per_round():
    """Each round's ratio is the official median over ours, within that round (after the warm-up steps)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_vs_official as bench
    finally:
        sys.path.remove(str(SCRIPT.parent))
    losses = {k: 1.0 for k in bench.LOSS_KEYS}

    def result(seconds):
        return {"seconds": seconds, "peak_rss_gib": 1.0, "losses": losses, "compile": {"requested": False}}

    runs = {"ours": [result([9.0, 1.0, 1.0, 3.0]), result([9.0, 2.0, 2.0, 2.0])],
            "official": [result([9.0, 3.0, 3.0, 3.0]), result([9.0, 2.0, 2.0, 2.0])]}
    row = bench.summarize("T", 8, runs, warmup=1)
    assert row["ratio_per_round"] == [3.0, 1.0]
    assert row["ratio_ours_over_official"] == pytest.approx(2.5 / 2.0)  # medians over all timed steps
