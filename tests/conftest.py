"""Shared pytest fixtures: the read-only `../shared` folder (skipped cleanly where absent), a read-only folder;
and the suite's leak check (`leakcheck`): a process the suite started that is alive at its end fails the run.
"""

from pathlib import Path

import pytest
from disks import tmpfs

pytest_plugins = ["leakcheck"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def _shared_subdir(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: this test needs the project's shared {name}/ folder beside the checkout")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """`../shared/fixtures`: reference outputs recorded from the official DINOv3 code."""
    return _shared_subdir("fixtures")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """`../shared/data`: real fetal ultrasound (HC18, FETAL_PLANES_DB)."""
    return _shared_subdir("data")


@pytest.fixture(scope="session")
def phantom_shards(tmp_path_factory) -> Path:
    """A small synthetic pool (`tools/build_dataset.py --source phantom`): 64 brain planes in 3 classes + 64 coarse."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("phantom") / "shards"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "build_dataset.py"), "--source", "phantom", "--out", str(out),
           "--num-samples", "128", "--image-size", "48", "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="session")
def phantom_patients(tmp_path_factory) -> Path:
    """The phantom with enough patients for the downstream monitor: 600 images of 48 px (val: 45 of 15 patients)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("phantom300") / "shards"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "build_dataset.py"), "--source", "phantom", "--out", str(out),
           "--num-samples", "600", "--image-size", "48", "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, phantom_shards) -> Path:
    """A finished 4-iteration tiny_cpu pretraining on the phantom (checkpoints 1 and 3, export at 3): read-only."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    cmd = [sys.executable, str(REPO_ROOT / "tools/train.py"), "--config-file",
           str(REPO_ROOT / "configs/train/tiny_cpu.yaml"), "--output-dir", str(out),
           f"train.dataset_path={phantom_shards}:train", "optim.epochs=1", "train.OFFICIAL_EPOCH_LENGTH=4",
           "checkpointing.period=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A folder on a read-only file system (a tmpfs mounted `ro`; skipped where mounting is not allowed)."""
    with tmpfs(tmp_path / "ro", "1m", "ro") as folder:
        yield folder
