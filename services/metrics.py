"""Prometheus metrics at /metrics, computed from the database when Prometheus scrapes.

RadLight runs as several processes (DICOM node, workers, API) that share one database, so no process
can count in its own memory what the others did. A custom collector reads the numbers from the
database, and the queue depth from Redis when Redis is the broker, at each scrape. Each app has its
own registry (never prometheus_client's global one), so several apps in one process do not collide.

Counters are totals over the rows in the database; gauges are rows in each state now. Histograms
cover a sliding window (``HISTOGRAM_WINDOW``, the last 24 h) with fixed buckets: they say how long
recent work took, so read them with ``histogram_quantile`` on the buckets directly, not through
``rate()``. No label holds patient data: only states, queue names, DICOM status codes and
destination names (configuration). Reading metrics needs the viewer role (a bearer token or an API
key); they are not patient-level data, so reads are not audited.
"""

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import Float, FromClause, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute, Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from db.models import (
    Delivery,
    DeliveryState,
    Destination,
    IngestFailure,
    Instance,
    Job,
    JobState,
    Result,
    Study,
    StudyState,
    utcnow,
)
from radlight.contracts import QUEUE_DELIVERY, QUEUE_INFERENCE
from radlight.settings import Settings
from services.api.schemas import ErrorOut
from services.auth import ViewerDep

logger = logging.getLogger(__name__)

HISTOGRAM_WINDOW = timedelta(hours=24)
BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0)
REDIS_TIMEOUT_S = 2.0
_REDIS_SCHEMES = ("redis://", "rediss://")

# What waits for each queue, as the database sees it: the depth when the broker cannot be asked.
WAITING_JOBS = (JobState.PENDING, JobState.QUEUED)
WAITING_DELIVERIES = (DeliveryState.PENDING, DeliveryState.RETRYING)


class seconds_between(FunctionElement[float]):  # noqa: N801 - an SQL function, named like one
    """Seconds from the first to the second UTC timestamp column, on SQLite and PostgreSQL."""

    type = Float()
    name = "seconds_between"
    inherit_cache = True


@compiles(seconds_between, "sqlite")
def _seconds_sqlite(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


@compiles(seconds_between, "postgresql")
def _seconds_postgresql(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"CAST(EXTRACT(EPOCH FROM ({end} - {start})) AS DOUBLE PRECISION)"


@dataclass(frozen=True)
class Stage:
    """One latency histogram: from ``start`` to ``end``, over rows whose ``end`` is in the window."""

    name: str
    doc: str
    start: QueryableAttribute[Any]
    end: QueryableAttribute[Any]
    source: FromClause


_WINDOW_TEXT = "in the last 24 h"
STAGES = (
    Stage(
        "radlight_study_receive_to_ready_seconds",
        f"First instance received to study ready (assembled and routed), studies ready {_WINDOW_TEXT}.",
        Study.first_received_at,
        Study.completed_at,
        Study.__table__,
    ),
    Stage(
        "radlight_job_queued_to_started_seconds",
        f"Job queued to a worker starting it, jobs started {_WINDOW_TEXT}.",
        Job.queued_at,
        Job.started_at,
        Job.__table__,
    ),
    Stage(
        "radlight_inference_seconds",
        f"Job started to finished on a worker (inference and results), jobs finished {_WINDOW_TEXT}.",
        Job.started_at,
        Job.finished_at,
        Job.__table__,
    ),
    Stage(
        "radlight_job_finished_to_delivered_seconds",
        f"Job finished to a result sent to a destination, deliveries sent {_WINDOW_TEXT}.",
        Job.finished_at,
        Delivery.sent_at,
        Delivery.__table__.join(Result.__table__).join(Job.__table__),
    ),
)


def _histogram(session: Session, stage: Stage, since: datetime) -> HistogramMetricFamily:
    """One SQL aggregate gives the count, the sum and every (cumulative) bucket."""
    seconds = seconds_between(stage.start, stage.end)
    query = (
        select(
            func.count(),
            func.coalesce(func.sum(seconds), 0.0),
            *(
                func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0)
                for bound in BUCKETS_S
            ),
        )
        .select_from(stage.source)
        .where(stage.start.is_not(None), stage.end.is_not(None), stage.end >= since)
    )
    count, total, *cumulative = session.execute(query).one()
    buckets = [(str(bound), float(n)) for bound, n in zip(BUCKETS_S, cumulative, strict=True)]
    buckets.append(("+Inf", float(count)))
    return HistogramMetricFamily(stage.name, stage.doc, buckets=buckets, sum_value=float(total))


def _counts_by_state(session: Session, column: QueryableAttribute[Any]) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column))
    return {str(state): int(count) for state, count in rows}


def _gauge_by_state(
    name: str, doc: str, states: Iterable[str], counts: Mapping[str, int]
) -> GaugeMetricFamily:
    """Every state appears, with 0 where no row is in it, so a series never vanishes."""
    family = GaugeMetricFamily(name, doc, labels=["state"])
    for state in states:
        family.add_metric([state], counts.get(state, 0))
    return family


def redis_queue_depths(broker_url: str, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue of a Redis broker.

    kombu's Redis transport keeps one list per queue and priority step: the queue's own name for
    priority 0, ``<name><sep><step>`` for the others. Unacknowledged messages (taken by a worker)
    are not waiting and are not counted. Raises redis.RedisError when Redis does not answer.
    """
    names = list(queues)
    client = redis.Redis.from_url(
        broker_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in names:
                for step in PRIORITY_STEPS:
                    pipe.llen(f"{queue}{RedisChannel.sep}{step}" if step else queue)
            lengths = pipe.execute()
    finally:
        client.close()
    per_queue = len(PRIORITY_STEPS)
    return {
        queue: sum(int(n) for n in lengths[i * per_queue : (i + 1) * per_queue])
        for i, queue in enumerate(names)
    }


class RadLightCollector(Collector):
    """Reads every RadLight metric from the database (and Redis) at each scrape."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings

    def collect(self) -> Iterator[Metric]:
        since = utcnow() - HISTOGRAM_WINDOW
        with self._sessions() as session:
            jobs = _counts_by_state(session, Job.state)
            deliveries = _counts_by_state(session, Delivery.state)
            yield from self._totals(session)
            yield _gauge_by_state(
                "radlight_studies",
                "Studies in each state now; complete and unrouted studies are ready.",
                StudyState,
                _counts_by_state(session, Study.state),
            )
            yield _gauge_by_state("radlight_jobs", "Jobs in each state now.", JobState, jobs)
            yield _gauge_by_state(
                "radlight_deliveries", "Deliveries in each state now.", DeliveryState, deliveries
            )
            yield self._delivery_failures(session)
            for stage in STAGES:
                yield _histogram(session, stage, since)
        yield from self._queue_depth(jobs, deliveries)

    def _totals(self, session: Session) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "radlight_instances_received",
            "DICOM instances received and stored (C-STORE Success), duplicates included.",
        )
        received.add_metric([], session.scalar(select(func.sum(Instance.received_count))) or 0)
        yield received
        refused = CounterMetricFamily(
            "radlight_ingest_failures",
            "C-STORE requests answered with a failure status, by DICOM status code.",
            labels=["status"],
        )
        rows = session.execute(
            select(IngestFailure.status, func.count()).group_by(IngestFailure.status)
        )
        for status, count in sorted(rows):
            refused.add_metric([f"0x{status:04X}"], count)
        yield refused

    def _delivery_failures(self, session: Session) -> GaugeMetricFamily:
        failed = func.count(Delivery.id)
        rows = session.execute(
            select(Destination.name, failed)
            .outerjoin(
                Delivery,
                (Delivery.destination_id == Destination.id)
                & (Delivery.state == DeliveryState.FAILED),
            )
            .group_by(Destination.name)
            .order_by(Destination.name)
        )
        family = GaugeMetricFamily(
            "radlight_delivery_failures",
            "Deliveries failed for good (retries spent), by destination; retrying one lowers it.",
            labels=["destination"],
        )
        for name, count in rows:
            family.add_metric([name], count)
        return family

    def _queue_depth(
        self, jobs: Mapping[str, int], deliveries: Mapping[str, int]
    ) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "radlight_queue_depth",
            "Work waiting per queue: messages in the Redis broker (source=broker), or else "
            "pending and queued jobs and pending and retrying deliveries (source=database).",
            labels=["queue", "source"],
        )
        depths = {
            QUEUE_INFERENCE: sum(jobs.get(s, 0) for s in WAITING_JOBS),
            QUEUE_DELIVERY: sum(deliveries.get(s, 0) for s in WAITING_DELIVERIES),
        }
        source = "database"
        broker_url = self._settings.effective_broker_url
        if broker_url.startswith(_REDIS_SCHEMES):
            up = GaugeMetricFamily("radlight_broker_up", "1 if the Redis broker answered.")
            try:
                depths = redis_queue_depths(broker_url, depths)
                source = "broker"
            except redis.RedisError as exc:
                logger.warning("metrics: Redis broker did not answer (%s)", type(exc).__name__)
            up.add_metric([], 1 if source == "broker" else 0)
            yield up
        for queue, depth in depths.items():
            family.add_metric([queue, source], depth)
        yield family


def registry_for(app: FastAPI) -> CollectorRegistry:
    """The app's own registry, made with its collector on first use."""
    registry: CollectorRegistry | None = getattr(app.state, "metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry()
        registry.register(RadLightCollector(app.state.sessions, app.state.settings))
        app.state.metrics_registry = registry
    return registry


router = APIRouter(tags=["metrics"])

_EXPOSITION = {"schema": {"type": "string"}}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus text format 0.0.4, or OpenMetrics when the Accept header "
            "asks for it.",
            "content": {
                "text/plain": _EXPOSITION,
                "application/openmetrics-text": _EXPOSITION,
            },
        },
        401: {"model": ErrorOut, "description": "No credentials, or an invalid token or API key."},
    },
)
def metrics(request: Request, _: ViewerDep) -> Response:
    """RadLight's metrics for Prometheus (viewer role or above; use an API key for the scraper)."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(content=encoder(registry_for(request.app)), media_type=content_type)
