"""Jobs: created once per (study, route, input set), claimed with a conditional update."""

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.models import Job, JobState, Route, StudyReport, utcnow

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


def claim_job(
    *, session: Session, job_id: int, worker: str | None = None, lease_s: float | None = None
) -> bool:
    """Move a job to RUNNING if nobody else has; the conditional update is the lock.

    With ``lease_s`` the claim is a lease held by ``worker`` until now + ``lease_s``; the worker
    renews it (:func:`renew_lease`) and the dispatcher re-queues the job once it runs out.
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(CLAIMABLE))
        .values(
            state=JobState.RUNNING,
            attempts=Job.attempts + 1,
            started_at=now,
            updated_at=now,
            worker=worker,
            lease_expires_at=None if lease_s is None else now + timedelta(seconds=lease_s),
        )
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def renew_lease(*, session: Session, job_id: int, worker: str, lease_s: float) -> bool:
    """Extend ``worker``'s lease on a RUNNING job; False when it no longer holds it (the job was
    finished, cancelled, or re-queued after the lease ran out)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.worker == worker)
        .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now)
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
        "lease_expires_at": None,
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
        .values(state=JobState.QUEUED, reason=reason, updated_at=utcnow(), lease_expires_at=None)
    )


def requeue_candidates(
    *, session: Session, stale_before: datetime, now: datetime | None = None
) -> list[int]:
    """Jobs the dispatcher must (re-)queue: committed but never queued (PENDING), queued with no
    progress since ``stale_before`` (the message was lost), or RUNNING with a lease that ran out
    before ``now`` (the worker died). A RUNNING job without a lease (claimed by a worker that does
    not hold one) counts as stalled after ``stale_before``.

    A broker outage or a dead worker never loses a study.
    """
    now = now or utcnow()
    rows = session.scalars(
        select(Job.id)
        .where(
            or_(
                Job.state == JobState.PENDING,
                (Job.state == JobState.QUEUED) & (Job.updated_at < stale_before),
                (Job.state == JobState.RUNNING) & (Job.lease_expires_at < now),
                (Job.state == JobState.RUNNING)
                & Job.lease_expires_at.is_(None)
                & (Job.updated_at < stale_before),
            )
        )
        .order_by(Job.id)
        .limit(500)
    )
    return list(rows)


def reset_stale(*, session: Session, job_id: int, reason: str | None = None) -> None:
    """A stuck RUNNING/QUEUED job goes back to QUEUED (its worker died or its message is lost);
    ``reason`` says which, for the API."""
    values: dict[str, object] = {
        "state": JobState.QUEUED,
        "queued_at": utcnow(),
        "updated_at": utcnow(),
        "lease_expires_at": None,
    }
    if reason is not None:
        values["reason"] = reason
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
        .values(**values)
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


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def report_input_hash(sop_instance_uids: Sequence[str], report_sha256: str) -> str:
    """The key of a job that grounds a posted report: the input set and the report's text."""
    digest = hashlib.sha256()
    digest.update(input_hash(sop_instance_uids).encode("ascii"))
    digest.update(b"\nreport:")
    digest.update(report_sha256.encode("ascii"))
    return digest.hexdigest()


def latest_report(*, session: Session, study_id: int) -> StudyReport | None:
    """The report posted last for a study, if any."""
    return session.scalars(
        select(StudyReport)
        .where(StudyReport.study_id == study_id)
        .order_by(StudyReport.id.desc())
        .limit(1)
    ).first()


def create_report_job(
    *, session: Session, study_id: int, text: str, created_by: str | None
) -> tuple[Job, bool] | None:
    """The job that grounds ``text`` on the study: over the route, model and input set of the
    study's latest analysis job, PENDING and new (True), or the one made for the same text before
    (False). None when no job has run on the study yet (nothing says which images to use)."""
    latest = session.scalars(
        select(Job)
        .where(Job.study_id == study_id, Job.report_id.is_(None))
        .order_by(Job.id.desc())
        .limit(1)
    ).first()
    if latest is None:
        return None
    digest = text_sha256(text)
    uids = sorted(set(latest.input_sop_instance_uids))
    key = report_input_hash(uids, digest)
    existing = session.scalars(
        select(Job).where(
            Job.study_id == study_id, Job.route_id == latest.route_id, Job.input_hash == key
        )
    ).one_or_none()
    if existing is not None:
        return existing, False
    report = StudyReport(study_id=study_id, text=text, text_sha256=digest, created_by=created_by)
    session.add(report)
    session.flush()
    job = Job(
        study_id=study_id,
        route_id=latest.route_id,
        input_hash=key,
        input_sop_instance_uids=uids,
        state=JobState.PENDING,
        model_name=latest.model_name,
        model_version=latest.model_version,
        report_id=report.id,
    )
    session.add(job)
    session.flush()
    return job, True
