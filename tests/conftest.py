"""Shared pytest fixtures: the read-only `../shared` folder, skipped cleanly where absent."""

from pathlib import Path

import pytest

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
