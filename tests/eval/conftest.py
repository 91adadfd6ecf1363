"""Fixtures of the evaluation tests: phantom shards (built by the real CLI), an easy masked set, one thread.

The machine running the suite may be shared: torch uses one thread in these tests (in-process and in
the subprocesses) so that a busy core does not stall OpenMP barriers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eval_testutil import run_tool, write_blob_shards


@pytest.fixture(autouse=True)
def one_thread():
    """torch.set_num_threads(1) for the test, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """48 brain-plane images of 32 px in 3 classes, split by patient, + 48 coarse planes (tools/build_dataset.py)."""
    out = tmp_path_factory.mktemp("eval_phantom") / "phantom"
    proc = run_tool("build_dataset.py", "--source", "phantom", "--out", out, "--num-samples", 96,
                    "--image-size", 32, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def blob_dir(tmp_path_factory) -> Path:
    """`write_blob_shards` with train 48 / val 15 / test 15 at 32 px."""
    return write_blob_shards(tmp_path_factory.mktemp("eval_blobs") / "blobs", {"train": 48, "val": 15, "test": 15})
