"""Jobs: created once per (study, route, input set), claimed with a conditional update."""

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.models import Job, JobState, Route, utcnow

CLAIMABLE = (JobState.PENDING, JobState.QUEUED)


def input_hash(sop_instance_uids: Sequence[str]) -> str:
    """Identity of an input set: the same instances give the same hash, in any order."""
    digest = hashlib.sha256()
    for uid in sorted(set(sop_instance_uids)):
        digest.update(uid.encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


def create_job_if_new(
    *, session: Session, study_id: int, route: Route, sop_instance_uids: Sequence[str]
) -> Job | None:
    """A new PENDING job, or None when this input set was already given to this route."""
    key = input_hash(sop_instance_uids)
    existing = session.scalars(
        select(Job).where(Job.study_id == study_id, Job.route_id == route.id, Job.input_hash == key)
    ).one_or_none()
    if existing is not None:
        return None
    job = Job(
        study_id=study_id,
        route_id=route.id,
        input_hash=key,
        input_sop_instance_uids=sorted(set(sop_instance_uids)),
        state=JobState.PENDING,
        model_name=route.model_name,
        model_version=route.model_version,
    )
    # A concurrent assembler creating the same job makes the unique constraint fail the whole
    # transaction; the caller's next tick then finds the job. (No savepoint: pysqlite does not
    # nest them reliably.)
    session.add(job)
    session.flush()
    return job


def mark_queued(*, session: Session, job_id: int) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.PENDING)
        .values(state=JobState.QUEUED, queued_at=utcnow(), updated_at=utcnow())
    )


def claim_job(*, session: Session, job_id: int) -> bool:
    """Move a job to RUNNING if nobody else has; the conditional update is the lock."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(CLAIMABLE))
        .values(state=JobState.RUNNING, attempts=Job.attempts + 1, started_at=now, updated_at=now)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def finish_job(
    *,
    session: Session,
    job_id: int,
    state: JobState,
    reason: str | None = None,
    model_version: str | None = None,
    model_sha256: str | None = None,
) -> None:
    if state not in (JobState.SUCCEEDED, JobState.NOT_ANALYSED, JobState.FAILED):
        raise ValueError(f"{state} is not a final job state")
    values: dict[str, object] = {
        "state": state,
        "reason": reason,
        "finished_at": utcnow(),
        "updated_at": utcnow(),
    }
    if model_version is not None:
        values["model_version"] = model_version
    if model_sha256 is not None:
        values["model_sha256"] = model_sha256
    session.execute(update(Job).where(Job.id == job_id).values(**values))


def record_stages(*, session: Session, job_id: int, stage_ms: Mapping[str, float]) -> None:
    """Store the milliseconds the job spent in each stage (radlight.stages), replacing a
    previous run's."""
    session.execute(update(Job).where(Job.id == job_id).values(stage_ms=dict(stage_ms)))


def release_for_retry(*, session: Session, job_id: int, reason: str) -> None:
    """A transient failure: back to QUEUED so a retried message can claim it again."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING)
        .values(state=JobState.QUEUED, reason=reason, updated_at=utcnow())
    )


def requeue_candidates(*, session: Session, stale_before: datetime) -> list[int]:
    """Jobs committed but never queued, or queued/running with no progress since ``stale_before``.

    The dispatcher re-queues them: a broker outage or a dead worker never loses a study.
    """
    rows = session.scalars(
        select(Job.id)
        .where(
            or_(
                Job.state == JobState.PENDING,
                Job.state.in_((JobState.QUEUED, JobState.RUNNING))
                & (Job.updated_at < stale_before),
            )
        )
        .order_by(Job.id)
        .limit(500)
    )
    return list(rows)


def reset_stale(*, session: Session, job_id: int) -> None:
    """A stuck RUNNING/QUEUED job goes back to QUEUED (its worker died or its message is lost)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
        .values(state=JobState.QUEUED, queued_at=utcnow(), updated_at=utcnow())
    )


# Operator actions (services/operations.py): retry, cancel and reprocess, each a conditional update
# so a job that a worker moved on in the meantime is left alone and the caller can say why.

RETRYABLE = (JobState.FAILED, JobState.NOT_ANALYSED, JobState.CANCELLED)
CANCELLABLE = (JobState.PENDING, JobState.QUEUED)
FINISHED = (JobState.SUCCEEDED, JobState.NOT_ANALYSED, JobState.FAILED, JobState.CANCELLED)


def reopen_job(*, session: Session, job_id: int, from_states: Sequence[JobState]) -> bool:
    """Put a finished job back to PENDING (a retry or a re-run), its old timings and reason
    cleared; False when the job is not in one of ``from_states``. The dispatcher queues PENDING
    jobs, so a job reopened while the broker is down is not lost."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(tuple(from_states)))
        .values(
            state=JobState.PENDING,
            reason=None,
            queued_at=None,
            started_at=None,
            finished_at=None,
            stage_ms=None,
            updated_at=now,
        )
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def mark_cancelled(*, session: Session, job_id: int, reason: str) -> bool:
    """Cancel a job no worker has claimed; False when it is not PENDING or QUEUED (anymore).

    ``claim_job`` only claims PENDING and QUEUED jobs, so a message already on the queue for a
    cancelled job is acknowledged and dropped by the worker, and the dispatcher skips it.
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(CANCELLABLE))
        .values(state=JobState.CANCELLED, reason=reason, finished_at=now, updated_at=now)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def reprocess_input_hash(sop_instance_uids: Sequence[str], model_version: str) -> str:
    """The key of a reprocess job: the input set and the model version it was asked to run.

    Distinct from :func:`input_hash` so the (study, route, input set) unique key admits one job per
    requested version; the worker derives result UIDs from it, so the results land in new series.
    """
    digest = hashlib.sha256()
    digest.update(input_hash(sop_instance_uids).encode("ascii"))
    digest.update(b"\nmodel-version:")
    digest.update(model_version.encode("utf-8"))
    return digest.hexdigest()


def job_for_model_version(*, session: Session, source: Job, model_version: str) -> Job | None:
    """A job of ``source``'s study, route and input set that runs (or ran) ``model_version``."""
    uids = source.input_sop_instance_uids
    keys = (input_hash(uids), reprocess_input_hash(uids, model_version))
    return session.scalars(
        select(Job)
        .where(
            Job.study_id == source.study_id,
            Job.route_id == source.route_id,
            Job.input_hash.in_(keys),
            Job.model_version == model_version,
        )
        .order_by(Job.id)
        .limit(1)
    ).one_or_none()


def create_reprocess_job(*, session: Session, source: Job, model_version: str) -> Job:
    """A new PENDING job over ``source``'s inputs with another model version (flushed)."""
    uids = sorted(set(source.input_sop_instance_uids))
    job = Job(
        study_id=source.study_id,
        route_id=source.route_id,
        input_hash=reprocess_input_hash(uids, model_version),
        input_sop_instance_uids=uids,
        state=JobState.PENDING,
        model_name=source.model_name,
        model_version=model_version,
    )
    session.add(job)
    session.flush()
    return job
