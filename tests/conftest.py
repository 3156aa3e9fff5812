"""Fixtures shared by every test: where the real assets live, and fresh settings per test."""

import os
import sqlite3
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


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head once per test process, for tests to copy."""
    from db.migrate import upgrade

    path = tmp_path_factory.mktemp("migrated") / "radlight.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def migrated_postgres() -> Iterator[str]:
    """The name of a PostgreSQL database migrated to head once per test process, which each
    test's database copies (``CREATE DATABASE … TEMPLATE``)."""
    from sqlalchemy.engine import make_url

    from db.migrate import upgrade
    from tests.peers import postgres_database

    with postgres_database() as url:
        upgrade(url)
        name = make_url(url).database
        assert name is not None
        yield name


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on each backend: SQLite in tmp_path, PostgreSQL on this machine.

    Each is a copy of a database migrated once per test process: running the migrations took
    0.3 to 0.5 s per test, a third of the suite's CPU (README, "Developing")."""
    from tests.peers import postgres_database

    if request.param == "sqlite":
        path = tmp_path / "radlight.db"
        template: Path = request.getfixturevalue("migrated_sqlite")
        source, target = sqlite3.connect(template), sqlite3.connect(path)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        yield f"sqlite:///{path}"
    else:
        with postgres_database(template=request.getfixturevalue("migrated_postgres")) as url:
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
