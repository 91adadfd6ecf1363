"""`tools/build_dataset.py` end to end in a subprocess: builds, merges, damaged shards, one-line errors."""

import argparse
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from curation_testutil import check_consistent

from dinov3_us.data.curation import SOURCES
from dinov3_us.launch.cli_build_dataset import build_parser

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools" / "build_dataset.py"), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def phantom(out: Path, *extra: str) -> dict:
    result = run("--source", "phantom", "--out", out, "--num-samples", 12, "--image-size", 32, *extra)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "manifest.json").read_text())


def test_phantom_end_to_end_with_progress(tmp_path):
    result = run("--source", "phantom", "--out", tmp_path / "demo", "--num-samples", 12, "--image-size", 32)
    assert result.returncode == 0, result.stderr
    assert "img/s" in result.stderr and "12 samples" in result.stdout
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert manifest["source"] == "phantom" and manifest["num_samples"] == 12
    check_consistent(tmp_path / "demo")
    assert (tmp_path / "demo" / "hashes.json").is_file() and (tmp_path / "demo" / "skipped.tsv").is_file()


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    cases = [
        (("--source", "fpdb", "--task", "tt", "--root", tmp_path), "--task 'tt' is not supported"),
        (("--source", "fpdb", "--out", tmp_path / "o"), "--root is required"),
        (("--source", "hc18", "--root", tmp_path / "nowhere"), "--root is not a directory"),
        (("--source", "phantom", "--val-fraction", "1.5"), "--val-fraction must be in [0, 1)"),
    ]
    for args, message in cases:
        if "--out" not in args:
            args = (*args, "--out", tmp_path / "o")
        result = run(*args, "--no-progress")
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    csv = tmp_path / "bad.csv"
    csv.write_text("Image_name;Patient_num;Plane;Train\n")
    result = run("--source", "fpdb", "--task", "brain-planes", "--root", tmp_path, "--csv", csv, "--out", tmp_path)
    assert result.returncode == 2 and "bad.csv: missing column 'Brain_plane'" in result.stderr
    result = run("--source", "phantom", "--merge", tmp_path, "--out", tmp_path / "o")
    assert result.returncode == 2 and "exactly one of --source or --merge" in result.stderr


def test_a_read_only_out_is_one_line_and_exit_2(read_only_dir):
    result = run("--source", "phantom", "--num-samples", "8", "--out", read_only_dir / "phantom", "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    out = read_only_dir / "phantom"
    assert result.stderr.strip() == f"error: --out {out}: cannot write there (Read-only file system)"


@pytest.mark.slow
def test_merge_pools_sources_and_survives_a_truncated_shard(tmp_path):
    a = phantom(tmp_path / "a", "--name", "pa", "--seed", "1")
    b = phantom(tmp_path / "b", "--name", "pb", "--seed", "2")
    result = run("--merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "pool", "--no-progress")
    assert result.returncode == 0, result.stderr
    pool = json.loads((tmp_path / "pool" / "manifest.json").read_text())
    assert pool["num_samples"] == a["num_samples"] + b["num_samples"] == 24 and pool["skipped"] == {}
    assert [i["name"] for i in pool["inputs"]] == ["pa", "pb"]
    check_consistent(tmp_path / "pool")

    phantom(tmp_path / "c", "--name", "pc", "--seed", "1", "--dedup")  # same images as 'a' under other keys
    result = run("--merge", tmp_path / "a", tmp_path / "c", "--out", tmp_path / "dups", "--no-progress")
    dups = json.loads((tmp_path / "dups" / "manifest.json").read_text())
    assert result.returncode == 0 and dups["skipped"] == {"near_duplicate": 12} and dups["num_samples"] == 12

    shard = tmp_path / "b" / b["shards"]["train"][0]["url"]
    with tarfile.open(shard) as tar:
        cut = tar.getmembers()[4].offset_data + 100  # inside the third sample's image
    shard.write_bytes(shard.read_bytes()[:cut])
    result = run("--merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "pool2", "--no-progress")
    assert result.returncode == 0, result.stderr
    pool2 = json.loads((tmp_path / "pool2" / "manifest.json").read_text())
    b_rest = b["num_samples"] - b["shards"]["train"][0]["n"]
    # the cut falls inside b's third training sample: the two before it are kept
    assert pool2["skipped"] == {"truncated_shard": 1} and pool2["num_samples"] == 12 + 2 + b_rest
    check_consistent(tmp_path / "pool2")
    result = run("--merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "pool3", "--strict", "--no-progress")
    assert result.returncode == 2 and f"{shard}: truncated_shard" in result.stderr


def test_rerun_is_byte_identical_and_other_arguments_need_overwrite(tmp_path):
    phantom(tmp_path / "x", "--no-progress")
    first = {p.name: p.read_bytes() for p in (tmp_path / "x").glob("*.tar")}
    phantom(tmp_path / "x", "--no-progress")
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "x").glob("*.tar")}
    result = run("--source", "phantom", "--out", tmp_path / "x", "--num-samples", 6, "--no-progress")
    assert result.returncode == 2 and "--overwrite" in result.stderr
    result = run("--source", "phantom", "--out", tmp_path / "x", "--num-samples", 6, "--overwrite", "--no-progress")
    assert result.returncode == 0 and json.loads((tmp_path / "x" / "manifest.json").read_text())["num_samples"] == 6


def test_help_lists_every_task_of_every_source_and_every_default():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # help lines wrap at spaces only, never inside a name
    words = set(re.findall(r"[\w-]+", text))
    for name, module in SOURCES.items():
        assert name in words
        for task in module.TASKS:
            assert task in words, f"--help omits task {task!r} of --source {name}"
    for name, module in SOURCES.items():
        assert module.DEFAULT_TASK is None or f"{module.DEFAULT_TASK} (default)" in text, name
    no_default = {"help", "source", "merge", "out", "root"}  # required, or one of the two modes
    for action in build_parser()._actions:
        if action.dest in no_default or isinstance(action, argparse._StoreTrueAction):
            continue
        assert "default" in (action.help or ""), f"--help of {action.option_strings} states no default"
