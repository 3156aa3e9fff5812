"""The FastAPI application: health, readiness and the read-only studies and jobs API.

The full admin API (auth, write operations, dashboard) grows here in its own issue.
"""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from db.migrate import current_revision, head_revision
from db.models import DeliveryState, Job, JobState, Result, Study, StudyState
from db.session import make_engine, make_session_factory
from radlight import NOT_FOR_PRIMARY_DIAGNOSIS, __version__
from radlight.settings import Settings

MAX_PAGE = 500
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, from the app's session factory."""
    factory: sessionmaker[Session] = request.app.state.sessions
    with factory() as session:
        yield session


_WITH_RESULTS = selectinload(Job.results).selectinload(Result.deliveries)

SessionDep = Annotated[Session, Depends(get_session)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]


class StudyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    study_instance_uid: str
    state: StudyState
    instance_count: int
    calling_ae: str | None
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    reason: str | None


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    destination_id: int
    state: DeliveryState
    attempts: int
    last_status: int | None
    reason: str | None
    sent_at: datetime | None


class ResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: str
    sop_instance_uid: str
    series_instance_uid: str
    source_sop_instance_uid: str | None
    model_name: str
    model_version: str
    summary: dict[str, object]
    deliveries: list[DeliveryOut] = []
    notice: str = NOT_FOR_PRIMARY_DIAGNOSIS


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    study_id: int
    route_id: int
    state: JobState
    model_name: str
    model_version: str | None
    model_sha256: str | None
    attempts: int
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results: list[ResultOut] = []


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


def create_app(settings: Settings) -> FastAPI:
    """Build the app for ``settings``; one engine per app, closed on shutdown."""
    engine = make_engine(settings.effective_database_url)
    sessions = make_session_factory(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(title="RadLight", version=__version__, lifespan=lifespan)
    app.state.sessions = sessions

    @app.exception_handler(SQLAlchemyError)
    async def _db_unavailable(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": "database unavailable"})

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/ready")
    def ready(session: SessionDep) -> JSONResponse:
        """Readiness: the database answers and its schema is at the head migration."""
        session.execute(text("SELECT 1"))
        current, head = current_revision(engine), head_revision()
        if current != head:
            return JSONResponse(
                status_code=503,
                content={"status": "not ready", "detail": f"schema at {current}, need {head}"},
            )
        return JSONResponse({"status": "ready", "schema": current})

    @app.get("/api/v1/studies")
    def list_studies(
        session: SessionDep,
        limit: Limit = 50,
        offset: Offset = 0,
        state: StudyState | None = None,
    ) -> Page[StudyOut]:
        query = select(Study)
        if state is not None:
            query = query.where(Study.state == state)
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(Study.id.desc()).limit(limit).offset(offset))
        return Page[StudyOut](
            items=[StudyOut.model_validate(s) for s in rows],
            total=total,
            limit=limit,
            offset=offset,
        )

    @app.get("/api/v1/studies/{study_instance_uid}")
    def get_study(
        session: SessionDep,
        study_instance_uid: Annotated[str, Path(max_length=64, pattern=UID_PATTERN)],
    ) -> StudyOut:
        study = session.scalars(
            select(Study).where(Study.study_instance_uid == study_instance_uid)
        ).one_or_none()
        if study is None:
            raise HTTPException(status_code=404, detail="no such study")
        return StudyOut.model_validate(study)

    @app.get("/api/v1/jobs")
    def list_jobs(
        session: SessionDep,
        limit: Limit = 50,
        offset: Offset = 0,
        state: JobState | None = None,
    ) -> Page[JobOut]:
        query = select(Job)
        if state is not None:
            query = query.where(Job.state == state)
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(
            query.options(_WITH_RESULTS).order_by(Job.id.desc()).limit(limit).offset(offset)
        )
        return Page[JobOut](
            items=[JobOut.model_validate(j) for j in rows],
            total=total,
            limit=limit,
            offset=offset,
        )

    @app.get("/api/v1/jobs/{job_id}")
    def get_job(session: SessionDep, job_id: int) -> JobOut:
        if not 0 < job_id < 2**63:
            raise HTTPException(status_code=422, detail="job id out of range")
        job = session.scalars(
            select(Job).options(_WITH_RESULTS).where(Job.id == job_id)
        ).one_or_none()
        if job is None:
            raise HTTPException(status_code=404, detail="no such job")
        return JobOut.model_validate(job)

    return app
