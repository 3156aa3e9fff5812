"""Fixtures shared by every test: where the real assets live, and fresh settings per test."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

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


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on each backend: SQLite in tmp_path, PostgreSQL on this machine."""
    from db.migrate import upgrade
    from tests.peers import postgres_database

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'radlight.db'}"
        upgrade(url)
        yield url
    else:
        with postgres_database() as url:
            upgrade(url)
            yield url


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """The URL of a private redis-server for this test alone (parallel runs never share one)."""
    from tests.peers import run_redis

    with run_redis(tmp_path / "redis") as server:
        yield server.url


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    from db.session import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()
