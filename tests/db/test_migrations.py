"""Migrations are the only schema path: they must produce exactly what the ORM declares."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import current_revision, head_revision, require_current_schema, upgrade
from db.models import Base
from db.session import make_engine
from radlight.errors import ConfigurationError


def test_migrated_schema_matches_the_orm(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
        assert diff == []
        assert current_revision(engine) == head_revision()
        require_current_schema(engine)
    finally:
        engine.dispose()


def test_unmigrated_database_is_refused_with_the_fix() -> None:
    engine = make_engine("sqlite://")
    try:
        with pytest.raises(ConfigurationError, match="radlight db upgrade"):
            require_current_schema(engine)
    finally:
        engine.dispose()


def test_sessions_fixture_talks_to_the_backend(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert session.connection().dialect.name in {"sqlite", "postgresql"}


def test_upgrade_keeps_existing_rows_and_fills_new_columns(tmp_path: Path) -> None:
    """0001 → head on a database that already holds configuration (SQLite and PostgreSQL)."""
    from tests.peers import postgres_database

    def check(url: str) -> None:
        upgrade(url, "0001")
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO destination (name, host, port, ae_title, enabled) "
                        "VALUES ('pacs', '127.0.0.1', 104, 'PACS', true)"
                    )
                )
                conn.execute(
                    text(
                        "INSERT INTO route (name, enabled, priority, pipeline, model_name) "
                        "VALUES ('chest', true, 100, 'chest-classifier', 'm')"
                    )
                )
            upgrade(url)
            with engine.connect() as conn:
                encoding = conn.execute(text("SELECT sc_encoding FROM destination")).scalar_one()
                seg, gsps = conn.execute(text("SELECT produce_seg, produce_gsps FROM route")).one()
            assert encoding == "lossless"
            assert (bool(seg), bool(gsps)) == (False, False)
        finally:
            engine.dispose()

    check(f"sqlite:///{tmp_path / 'old.db'}")
    with postgres_database() as url:
        check(url)
