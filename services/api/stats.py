"""Throughput, per-stage latency percentiles and failure rates, over a bounded recent window.

Portable on SQLite and PostgreSQL: the database returns timestamps (at most MAX_SAMPLES of the
newest per stage) and Python buckets them and takes the percentiles, so no dialect's date or
percentile functions are needed.
"""

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from db.models import (
    Delivery,
    DeliveryState,
    Job,
    JobState,
    Result,
    Study,
    utcnow,
)
from services.api.schemas import responses
from services.auth import ViewerDep
from services.deps import SessionDep

router = APIRouter(prefix="/api/v1/stats", tags=["stats"])

MAX_HOURS = 24 * 7
MAX_SAMPLES = 20_000
JOB_DONE = (JobState.SUCCEEDED, JobState.NOT_ANALYSED, JobState.FAILED)
DELIVERY_DONE = (DeliveryState.SENT, DeliveryState.FAILED)


class HourCount(BaseModel):
    hour_start: datetime = Field(description="Start of the clock hour (UTC).")
    studies: int


class StageLatency(BaseModel):
    """Seconds spent in one stage by the items that left it within the window."""

    count: int = Field(description="How many items the percentiles are taken over.")
    truncated: bool = Field(description=f"True when only the newest {MAX_SAMPLES} were used.")
    p50_s: float | None = Field(examples=[1.2])
    p90_s: float | None = Field(examples=[3.4])
    p99_s: float | None = Field(examples=[9.9])


class FailureRate(BaseModel):
    failed: int
    finished: int
    rate: float | None = Field(description="failed / finished; null when nothing finished.")


class StatsOut(BaseModel):
    generated_at: datetime
    window_hours: int
    studies_per_hour: list[HourCount] = Field(description="Oldest hour first, the current last.")
    latency: dict[str, StageLatency] = Field(
        description="receive_to_ready (first instance to routed), queued_to_started, "
        "inference (started to finished), finished_to_delivered (job end to each result sent)."
    )
    failure_rates: dict[str, FailureRate] = Field(description="jobs and deliveries.")
    counts: dict[str, dict[str, int]] = Field(
        description="Current number of studies, jobs and deliveries in each state (all time)."
    )


def _latency(session: Session, query: Select[Any, Any]) -> StageLatency:
    """Percentiles of ``end - start`` over the (start, end) rows of ``query``, newest first."""
    rows = session.execute(query.limit(MAX_SAMPLES + 1)).all()
    truncated = len(rows) > MAX_SAMPLES
    durations = [
        (end - start).total_seconds()
        for start, end in rows[:MAX_SAMPLES]
        if start is not None and end is not None and end >= start
    ]
    if not durations:
        return StageLatency(count=0, truncated=truncated, p50_s=None, p90_s=None, p99_s=None)
    p50, p90, p99 = (round(float(v), 3) for v in np.percentile(durations, [50, 90, 99]))
    return StageLatency(count=len(durations), truncated=truncated, p50_s=p50, p90_s=p90, p99_s=p99)


def _rate(counts: dict[str, int], failed: str) -> FailureRate:
    finished = sum(counts.values())
    failures = counts.get(failed, 0)
    return FailureRate(
        failed=failures,
        finished=finished,
        rate=round(failures / finished, 4) if finished else None,
    )


def _by_state(session: Session, query: Select[Any, Any]) -> dict[str, int]:
    return {str(state): int(n) for state, n in session.execute(query).all()}


def _hourly(times: Iterable[datetime], first_hour: datetime, hours: int) -> list[HourCount]:
    counts = [0] * hours
    for at in times:
        index = int((at - first_hour).total_seconds() // 3600)
        if 0 <= index < hours:
            counts[index] += 1
    return [
        HourCount(hour_start=first_hour + timedelta(hours=i), studies=n)
        for i, n in enumerate(counts)
    ]


@router.get("", responses=responses())
def get_stats(
    session: SessionDep,
    principal: ViewerDep,
    hours: Annotated[
        int,
        Query(ge=1, le=MAX_HOURS, description="Window: the last N clock hours, this one included."),
    ] = 24,
) -> StatsOut:
    """Studies per hour, per-stage latency percentiles, failure rates and counts by state."""
    now = utcnow()
    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    arrivals = session.scalars(
        select(Study.first_received_at).where(Study.first_received_at >= first_hour)
    )
    latency = {
        "receive_to_ready": _latency(
            session,
            select(Study.first_received_at, Study.completed_at)
            .where(Study.completed_at >= first_hour)
            .order_by(Study.completed_at.desc()),
        ),
        "queued_to_started": _latency(
            session,
            select(Job.queued_at, Job.started_at)
            .where(Job.started_at >= first_hour)
            .order_by(Job.started_at.desc()),
        ),
        "inference": _latency(
            session,
            select(Job.started_at, Job.finished_at)
            .where(Job.finished_at >= first_hour, Job.state.in_(JOB_DONE))
            .order_by(Job.finished_at.desc()),
        ),
        "finished_to_delivered": _latency(
            session,
            select(Job.finished_at, Delivery.sent_at)
            .join(Result, Result.job_id == Job.id)
            .join(Delivery, Delivery.result_id == Result.id)
            .where(Delivery.sent_at >= first_hour)
            .order_by(Delivery.sent_at.desc()),
        ),
    }
    finished_jobs = _by_state(
        session,
        select(Job.state, func.count())
        .where(Job.finished_at >= first_hour, Job.state.in_(JOB_DONE))
        .group_by(Job.state),
    )
    finished_deliveries = _by_state(
        session,
        select(Delivery.state, func.count())
        .where(Delivery.updated_at >= first_hour, Delivery.state.in_(DELIVERY_DONE))
        .group_by(Delivery.state),
    )
    return StatsOut(
        generated_at=now,
        window_hours=hours,
        studies_per_hour=_hourly(arrivals, first_hour, hours),
        latency=latency,
        failure_rates={
            "jobs": _rate(finished_jobs, JobState.FAILED.value),
            "deliveries": _rate(finished_deliveries, DeliveryState.FAILED.value),
        },
        counts={
            name: _by_state(session, select(column, func.count()).group_by(column))
            for name, column in (
                ("studies", Study.state),
                ("jobs", Job.state),
                ("deliveries", Delivery.state),
            )
        },
    )
