"""What every router shares: the request's database session, settings, and paging types."""

from collections.abc import Iterator
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from radlight.queue import TaskProducer
from radlight.settings import Settings

MAX_PAGE = 500
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, from the app's session factory."""
    factory: sessionmaker[Session] = request.app.state.sessions
    with factory() as session:
        yield session


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_producer(request: Request) -> TaskProducer:
    """The app's task producer, made on first use (the API enqueues by task name only)."""
    producer: TaskProducer | None = getattr(request.app.state, "producer", None)
    if producer is None:
        producer = TaskProducer(request.app.state.settings)
        request.app.state.producer = producer
    return producer


def close_producer(app: FastAPI) -> None:
    producer: TaskProducer | None = getattr(app.state, "producer", None)
    if producer is not None:
        producer.close()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ProducerDep = Annotated[TaskProducer, Depends(get_producer)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Rows to skip.")]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list, with the total number of rows the filters match."""

    items: list[T]
    total: int
    limit: int
    offset: int


def client_address(request: Request) -> str | None:
    """The peer address as the server saw it (a proxy's X-Forwarded-For is not trusted here)."""
    return request.client.host if request.client else None
