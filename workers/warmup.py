"""A new worker process readies itself for its first job while it waits for one.

Measured (bench/bench_cold_start.py, docs/PERFORMANCE.md): a child's first job took about twice
as long as its later ones, most of it outside the job's stages: reading the model file, its
sha256 and building its session, and the database's first connection. None of that depends on
the job, so it is done here, in a thread of the child's own, as soon as Celery has forked it,
with the items of each model's findings report (``workers.results.sr.prepare_findings_reports``),
which its first report made otherwise (about 30 ms).
The thread never fails the child: what it cannot load is logged, and the job that needs it
loads it (and reports why not) as before. A job that arrives while a model is being loaded
waits for that load (``models.runtime`` builds each session once).
"""

import logging
import threading
import time

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from db.models import Route
from models.labels import finding_code
from models.precision import select_precision
from models.registry import ModelEntry
from models.runtime import CACHE_SIZE, load_model
from radlight.errors import ModelError
from workers.analysis import algorithm_of
from workers.context import WorkerContext
from workers.results.sr import prepare_findings_reports

logger = logging.getLogger(__name__)


def route_models(ctx: WorkerContext) -> list[tuple[str, str | None]]:
    """The (model name, version or None for the latest) of the enabled routes, in the order the
    routes are tried, each once; at most as many as a process keeps sessions for."""
    with ctx.sessions() as session:
        rows = session.execute(
            select(Route.model_name, Route.model_version)
            .where(Route.enabled)
            .order_by(Route.priority, Route.id)
        ).all()
    wanted = list(dict.fromkeys((name, version) for name, version in rows))
    return wanted[:CACHE_SIZE]


def warm_up(ctx: WorkerContext) -> list[ModelEntry]:
    """Connect to the database and load the enabled routes' models; returns those loaded."""
    started = time.perf_counter()
    try:
        wanted = route_models(ctx)
    except SQLAlchemyError as exc:
        logger.warning("worker warm-up: cannot read the routes, models load on first use: %s", exc)
        return []
    loaded: list[ModelEntry] = []
    for name, version in wanted:
        try:
            entry = select_precision(
                ctx.registry.get(name, version), ctx.settings.inference_precision
            )
            load_model(entry)
            labels = [finding_code(label.name) for label in entry.card.labels]
            prepare_findings_reports(algorithm_of(entry), labels)
        except ModelError as exc:
            logger.warning("worker warm-up: model %s %s not loaded: %s", name, version, exc)
            continue
        loaded.append(entry)
    logger.info(
        "worker warm-up: %d of %d route models loaded in %.0f ms",
        len(loaded),
        len(wanted),
        (time.perf_counter() - started) * 1000,
    )
    return loaded


def start_warm_up(ctx: WorkerContext) -> threading.Thread:
    """Run :func:`warm_up` in a daemon thread; an unexpected error is logged, never raised."""

    def run() -> None:
        try:
            warm_up(ctx)
        except Exception:  # a bug here must not take the worker process down
            logger.exception("worker warm-up failed; models load on first use")

    thread = threading.Thread(target=run, name="radlight-warm-up", daemon=True)
    thread.start()
    return thread
