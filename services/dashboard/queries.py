"""What the dashboard pages show, read from the database in a few bounded queries each."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from db.models import (
    Delivery,
    DeliveryState,
    IngestFailure,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    Study,
    StudyState,
    utcnow,
)

RECENT_FAILURES = 20
WAITING_JOBS = (JobState.PENDING, JobState.QUEUED)
WAITING_DELIVERIES = (DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.RETRYING)
FINISHED_JOBS = (JobState.SUCCEEDED, JobState.NOT_ANALYSED, JobState.FAILED)


@dataclass(frozen=True)
class Overview:
    """The live numbers: what waits, what was done in the last hour, and what failed."""

    at: datetime
    jobs_waiting: int
    jobs_running: int
    deliveries_waiting: int
    instances_last_hour: int
    jobs_finished_last_hour: dict[str, int]
    deliveries_sent_last_hour: int
    failed_jobs_total: int
    failed_deliveries_total: int
    failed_jobs: list[Job]
    failed_deliveries: list[Delivery]
    ingest_failures: list[IngestFailure]


def _count(session: Session, query: Select[int]) -> int:
    return session.scalar(query) or 0


def overview(*, session: Session, now: datetime | None = None) -> Overview:
    now = now or utcnow()
    since = now - timedelta(hours=1)
    job_states: dict[JobState, int] = dict(
        session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    )
    finished: dict[JobState, int] = dict(
        session.execute(
            select(Job.state, func.count())
            .where(Job.finished_at >= since, Job.state.in_(FINISHED_JOBS))
            .group_by(Job.state)
        ).all()
    )
    failed_jobs = list(
        session.scalars(
            select(Job)
            .options(selectinload(Job.route), selectinload(Job.study))
            .where(Job.state == JobState.FAILED)
            .order_by(Job.updated_at.desc(), Job.id.desc())
            .limit(RECENT_FAILURES)
        )
    )
    failed_deliveries = list(
        session.scalars(
            select(Delivery)
            .options(
                selectinload(Delivery.destination),
                selectinload(Delivery.result).selectinload(Result.job),
            )
            .where(Delivery.state == DeliveryState.FAILED)
            .order_by(Delivery.updated_at.desc(), Delivery.id.desc())
            .limit(RECENT_FAILURES)
        )
    )
    return Overview(
        at=now,
        jobs_waiting=sum(job_states.get(s, 0) for s in WAITING_JOBS),
        jobs_running=job_states.get(JobState.RUNNING, 0),
        deliveries_waiting=_count(
            session,
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.state.in_(WAITING_DELIVERIES)),
        ),
        instances_last_hour=_count(
            session, select(func.count()).select_from(Instance).where(Instance.received_at >= since)
        ),
        jobs_finished_last_hour={s.value: finished.get(s, 0) for s in FINISHED_JOBS},
        deliveries_sent_last_hour=_count(
            session, select(func.count()).select_from(Delivery).where(Delivery.sent_at >= since)
        ),
        failed_jobs_total=job_states.get(JobState.FAILED, 0),
        failed_deliveries_total=_count(
            session,
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.state == DeliveryState.FAILED),
        ),
        failed_jobs=failed_jobs,
        failed_deliveries=failed_deliveries,
        ingest_failures=list(
            session.scalars(
                select(IngestFailure)
                .order_by(IngestFailure.received_at.desc(), IngestFailure.id.desc())
                .limit(10)
            )
        ),
    )


@dataclass(frozen=True)
class StudyFilters:
    """The studies page's filters; every field is optional."""

    state: StudyState | None = None
    calling_ae: str | None = None
    modality: str | None = None
    received_from: date | None = None
    received_to: date | None = None

    def query_args(self) -> dict[str, str]:
        """The filters as query parameters, for paging links."""
        values = {
            "state": self.state.value if self.state else None,
            "calling_ae": self.calling_ae,
            "modality": self.modality,
            "received_from": self.received_from.isoformat() if self.received_from else None,
            "received_to": self.received_to.isoformat() if self.received_to else None,
        }
        return {k: v for k, v in values.items() if v}


@dataclass(frozen=True)
class StudyRow:
    study: Study
    modalities: list[str]
    job_states: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyPage:
    rows: list[StudyRow]
    total: int
    limit: int
    offset: int


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def studies(*, session: Session, filters: StudyFilters, limit: int, offset: int) -> StudyPage:
    """A page of studies, newest first, with each one's modalities and job states."""
    query = select(Study)
    if filters.state is not None:
        query = query.where(Study.state == filters.state)
    if filters.calling_ae:
        query = query.where(Study.calling_ae == filters.calling_ae)
    if filters.modality:
        query = query.where(
            Study.id.in_(select(Series.study_id).where(Series.modality == filters.modality))
        )
    if filters.received_from is not None:
        query = query.where(Study.last_received_at >= _day_start(filters.received_from))
    if filters.received_to is not None:
        end = _day_start(filters.received_to) + timedelta(days=1)
        query = query.where(Study.first_received_at < end)
    total = _count(session, select(func.count()).select_from(query.subquery()))
    page = list(session.scalars(query.order_by(Study.id.desc()).limit(limit).offset(offset)))
    ids = [s.id for s in page]
    modalities: dict[int, set[str]] = defaultdict(set)
    for study_id, modality in session.execute(
        select(Series.study_id, Series.modality).where(Series.study_id.in_(ids)).distinct()
    ):
        if modality:
            modalities[study_id].add(modality)
    jobs: dict[int, dict[str, int]] = defaultdict(dict)
    for study_id, state, count in session.execute(
        select(Job.study_id, Job.state, func.count())
        .where(Job.study_id.in_(ids))
        .group_by(Job.study_id, Job.state)
    ):
        jobs[study_id][state.value] = count
    rows = [StudyRow(s, sorted(modalities[s.id]), jobs[s.id]) for s in page]
    return StudyPage(rows, total, limit, offset)


def study_detail(*, session: Session, study_id: int) -> Study | None:
    """One study with its series, instances, jobs, results and deliveries, loaded at once."""
    return session.scalars(
        select(Study)
        .options(
            selectinload(Study.series).selectinload(Series.instances),
            selectinload(Study.jobs).selectinload(Job.route),
            selectinload(Study.jobs)
            .selectinload(Job.results)
            .selectinload(Result.deliveries)
            .selectinload(Delivery.destination),
        )
        .where(Study.id == study_id)
    ).one_or_none()
