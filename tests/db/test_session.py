"""Pooled PostgreSQL connections that died while idle (a database restart, an idle timeout) are
replaced before use; ones used a moment ago are not pinged. Real PostgreSQL; the server end of a
pooled connection is killed with pg_terminate_backend."""

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from db import session as db_session
from db.session import make_engine
from tests.peers import postgres_database


@pytest.fixture
def engine() -> Iterator[Engine]:
    with postgres_database() as url:
        made = make_engine(url)
        try:
            yield made
        finally:
            made.dispose()


def pooled_backend_killed(engine: Engine) -> None:
    """Use one connection, return it to the pool, and kill its server process."""
    with engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with make_engine(str(engine.url.render_as_string(hide_password=False))).connect() as other:
        assert other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()


def test_an_idle_connection_that_died_is_replaced(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_session, "PING_IF_IDLE_S", 0.0)  # every pooled connection counts as idle
    pooled_backend_killed(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar_one() == 1


def test_a_connection_used_a_moment_ago_is_not_pinged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_session, "PING_IF_IDLE_S", 3600.0)
    pooled_backend_killed(engine)
    # Not pinged, so its statement fails (callers retry); SQLAlchemy then invalidates the pool.
    with pytest.raises(OperationalError), engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar_one() == 1
