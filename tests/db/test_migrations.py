"""Migrations are the only schema path: they must produce exactly what the ORM declares."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import current_revision, head_revision, require_current_schema
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
