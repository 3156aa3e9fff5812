"""Fixtures shared by every test: where the real assets live, and fresh settings per test."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def assets_root() -> Path:
    """../shared/assets beside the checkout, or RADLIGHT_ASSETS; read there, never copied."""
    return Path(os.environ.get("RADLIGHT_ASSETS", REPO_ROOT.parent / "shared" / "assets")).resolve()


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    root = assets_root()
    if not (root / "dicom").is_dir():
        pytest.fail(f"shared assets not found at {root}; set RADLIGHT_ASSETS")
    return root


@pytest.fixture(scope="session")
def real_dicom_files(assets_dir: Path) -> list[Path]:
    files = sorted((assets_dir / "dicom").glob("*.dcm"))
    assert len(files) == 2, files
    return files
