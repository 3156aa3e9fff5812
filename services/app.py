"""The FastAPI application: health and readiness, then one router per resource behind auth.

Routers live in ``services/api/`` (one resource each); authentication and roles in
``services/auth.py``; the audit trail in ``services/audit.py``.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from db.migrate import current_revision, head_revision
from db.session import make_engine, make_session_factory
from radlight import __version__
from radlight.settings import Settings
from services import auth, dashboard, metrics
from services.api import (
    ae_settings,
    audit_log,
    deliveries,
    destinations,
    grounding,
    ingest_failures,
    jobs,
    models,
    reports,
    results,
    routes,
    stats,
    studies,
)
from services.api.schemas import ErrorOut
from services.deps import SessionDep, close_producer

API_DESCRIPTION = """RadLight's admin and results API.

Authenticate with the OAuth2 password flow (`POST /api/v1/auth/token`, then
`Authorization: Bearer <token>`) or with an API key (`X-API-Key`). Roles: **admin** (everything),
**operator** (retry and cancel, read configuration), **viewer** (read studies and results).
Every result is an AI result and not for primary diagnosis.
"""


# FastAPI answers 400 itself when a body is not valid JSON/UTF-8; every router documents it.
UNREADABLE_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The request body could not be read."}
}


def create_app(settings: Settings) -> FastAPI:
    """Build the app for ``settings``; one engine per app, closed on shutdown."""
    engine = make_engine(settings.effective_database_url)
    sessions = make_session_factory(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        close_producer(app)
        engine.dispose()

    app = FastAPI(
        title="RadLight", version=__version__, description=API_DESCRIPTION, lifespan=lifespan
    )
    app.state.sessions = sessions
    app.state.settings = settings
    app.state.engine = engine

    @app.exception_handler(SQLAlchemyError)
    async def _db_unavailable(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": "database unavailable"})

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/ready", tags=["health"], responses={503: {"description": "Not ready."}})
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

    for module in (
        auth,
        studies,
        reports,
        jobs,
        results,
        deliveries,
        ingest_failures,
        destinations,
        routes,
        models,
        ae_settings,
        audit_log,
        stats,
        grounding,
        metrics,
        dashboard,
    ):
        app.include_router(module.router, responses=UNREADABLE_BODY)
    return app
