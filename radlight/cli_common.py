"""What every ``radlight`` subcommand module shares: the command type, output, a db session."""

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from radlight.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

Command = Callable[[argparse.Namespace, Settings], int]


def out(text: str) -> None:
    """User-facing CLI output (the only place RadLight prints)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextmanager
def db_transaction(settings: Settings) -> "Iterator[Session]":
    """A committed-on-success session on a short-lived engine, for one CLI command."""
    from db.session import make_engine, make_session_factory, transaction

    engine = make_engine(settings.effective_database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()
