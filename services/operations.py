"""Operator actions on jobs and deliveries, shared by the REST API and the dashboard.

Each action changes the database with a conditional update, records an audit event in the same
transaction, commits, and only then puts the id on the queue (payloads are sent after the commit).
When the broker cannot be reached the change stays committed: a PENDING job or delivery is queued
again by the node's dispatcher (``dicom_node.assembly.Assembler.dispatch`` picks every PENDING job
through ``db.jobs.requeue_candidates``; ``dispatch_deliveries`` picks PENDING deliveries untouched
for a minute), so nothing is lost, only later. Callers tell the two cases apart with
:func:`job_queued` and :func:`delivery_queued`.

Stable signatures (``principal`` and ``request`` are keyword-only and feed the audit trail)::

    retry_job(session, producer, job_id, *, principal, request=None) -> Job
        FAILED / NOT_ANALYSED / CANCELLED -> PENDING, then queued (QUEUED).
    cancel_job(session, job_id, *, principal, request=None) -> Job
        PENDING / QUEUED -> CANCELLED. A RUNNING job cannot be cancelled (409): the worker
        finishes it. A cancelled job is never claimed (``db.jobs.claim_job`` takes only PENDING and
        QUEUED) nor re-queued by the dispatcher.
    reprocess_job(session, producer, job_id, model_version, models_dir, *, principal,
                  request=None) -> Job
        Runs the job's study, route and input set with another installed model version (422 if
        it is not installed). A new job is created whose key includes the version, so its results
        get new UIDs and land in new series. If a job of the same inputs already runs or ran
        that version, that job is re-run instead (same result UIDs: results replaced, never
        duplicated), or 409 when it is still pending, queued or running.
    retry_delivery(session, producer, delivery_id, *, principal, request=None) -> Delivery
        FAILED -> PENDING with a fresh retry budget, then queued.
    retry_failed_deliveries(session, producer, destination_id=None, *, principal,
                            request=None) -> list[int]
        Every FAILED delivery (at most MAX_BULK, oldest first), optionally to one destination;
        returns the ids reopened.

Errors are :class:`OperationError` subclasses whose ``status_code`` is the HTTP status they mean
(404 no such thing, 409 wrong state, 422 bad argument); the session is rolled back first.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.deliveries import failed_delivery_ids, note_pending, reopen_failed_delivery
from db.jobs import (
    CANCELLABLE,
    FINISHED,
    RETRYABLE,
    create_report_job,
    create_reprocess_job,
    job_for_model_version,
    mark_cancelled,
    mark_queued,
    reopen_job,
)
from db.models import Delivery, DeliveryState, Destination, Job, JobState, Study
from models.registry import ModelRegistry
from radlight.errors import ModelError, RadLightError
from radlight.queue import TaskProducer
from services import audit
from services.principal import Principal

logger = logging.getLogger(__name__)

MAX_BULK = 1000
AWAITING_BROKER = (
    "retry accepted, but the broker could not be reached: the node's dispatcher queues it "
    "once the broker answers"
)


class OperationError(RadLightError):
    """An action that cannot be done; ``status_code`` is the HTTP status it maps to."""

    status_code = 400


class NotFoundError(OperationError):
    status_code = 404


class ConflictError(OperationError):
    """The thing is not in a state that allows the action (or another caller got there first)."""

    status_code = 409


class InvalidArgumentError(OperationError):
    status_code = 422


def job_queued(job: Job) -> bool:
    """False while the job waits for the dispatcher because the broker was down."""
    return job.state is not JobState.PENDING


def delivery_queued(delivery: Delivery) -> bool:
    """False while the delivery waits for the dispatcher because the broker was down."""
    return not (delivery.state is DeliveryState.PENDING and delivery.reason == AWAITING_BROKER)


@dataclass(frozen=True)
class _Audited:
    """One action by one principal on one target, recorded whether it is done or refused."""

    session: Session
    principal: Principal
    request: Request | None
    action: str
    target_type: str | None
    target_id: int | None

    def done(self, **detail: object) -> None:
        """Record the action beside its change and commit both."""
        audit.by(
            self.session,
            self.principal,
            self.action,
            self.request,
            target_type=self.target_type,
            target_id=self.target_id,
            detail=detail,
        )
        self.session.commit()

    def refused(self, error: OperationError) -> OperationError:
        """Roll back and record the refused attempt (a 404 is not recorded: nothing was there)."""
        self.session.rollback()
        if not isinstance(error, NotFoundError):
            audit.by(
                self.session,
                self.principal,
                self.action,
                self.request,
                target_type=self.target_type,
                target_id=self.target_id,
                outcome="failed",
                detail={"reason": str(error)[:500]},
            )
            self.session.commit()
        return error


def _wrong_state(what: str, state: str, allowed: tuple[JobState, ...] | str, verb: str) -> str:
    names = allowed if isinstance(allowed, str) else ", ".join(s.value for s in allowed)
    return f"{what} is {state}; only {names} ones can be {verb}"


def _get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job


def _queue_job(session: Session, producer: TaskProducer, job: Job) -> Job:
    """Send a committed PENDING job's id; QUEUED on success, PENDING for the dispatcher if not."""
    try:
        producer.enqueue_job(job.id)
    except (BrokerError, OSError) as exc:
        logger.warning("could not queue job %d, the dispatcher will: %s", job.id, exc)
    else:
        mark_queued(session=session, job_id=job.id)
        session.commit()
    session.refresh(job)
    return job


def retry_job(
    session: Session,
    producer: TaskProducer,
    job_id: int,
    *,
    principal: Principal,
    request: Request | None = None,
) -> Job:
    """Run a failed, not-analysed or cancelled job again (PENDING, then queued)."""
    act = _Audited(session, principal, request, "job.retry", "job", job_id)
    try:
        job = _get_job(session, job_id)
        previous = job.state
        if not reopen_job(session=session, job_id=job_id, from_states=RETRYABLE):
            session.refresh(job)
            raise ConflictError(_wrong_state(f"job {job_id}", job.state, RETRYABLE, "retried"))
    except OperationError as exc:
        raise act.refused(exc) from None
    act.done(previous=previous.value)
    return _queue_job(session, producer, job)


def cancel_job(
    session: Session, job_id: int, *, principal: Principal, request: Request | None = None
) -> Job:
    """Cancel a job that no worker has claimed yet."""
    act = _Audited(session, principal, request, "job.cancel", "job", job_id)
    try:
        job = _get_job(session, job_id)
        previous = job.state
        reason = f"cancelled by {principal.actor}"
        if not mark_cancelled(session=session, job_id=job_id, reason=reason):
            session.refresh(job)
            if job.state is JobState.RUNNING:
                raise ConflictError(
                    f"job {job_id} is running on a worker and cannot be stopped there; it "
                    "finishes and its results are delivered as usual"
                )
            raise ConflictError(_wrong_state(f"job {job_id}", job.state, CANCELLABLE, "cancelled"))
    except OperationError as exc:
        raise act.refused(exc) from None
    act.done(previous=previous.value)
    session.refresh(job)
    return job


def _check_installed(models_dir: Path, model_name: str, model_version: str) -> None:
    try:
        ModelRegistry(models_dir).get(model_name, model_version)
    except (ModelError, ValueError) as exc:
        raise InvalidArgumentError(
            f"model {model_name} version {model_version!r} cannot be used: {exc}"
        ) from exc


def reprocess_job(
    session: Session,
    producer: TaskProducer,
    job_id: int,
    model_version: str,
    models_dir: Path,
    *,
    principal: Principal,
    request: Request | None = None,
) -> Job:
    """Run a job's inputs with another model version: a new job, or a re-run of the job that
    already used that version."""
    act = _Audited(session, principal, request, "job.reprocess", "job", job_id)
    try:
        source = _get_job(session, job_id)
        _check_installed(models_dir, source.model_name, model_version)
        try:
            job, created = _reprocess_target(session, source, model_version)
            act.done(model_version=model_version, job_id=job.id, new_job=created)
        except IntegrityError:  # the unique (study, route, input key): a concurrent request
            raise ConflictError(
                f"another request created the {model_version} job for job {job_id} just now"
            ) from None
    except OperationError as exc:
        raise act.refused(exc) from None
    return _queue_job(session, producer, job)


def _reprocess_target(session: Session, source: Job, model_version: str) -> tuple[Job, bool]:
    """The job that runs ``source``'s inputs with ``model_version``: an existing one reopened,
    or a new one (True)."""
    existing = job_for_model_version(session=session, source=source, model_version=model_version)
    if existing is None:
        return create_reprocess_job(
            session=session, source=source, model_version=model_version
        ), True
    if not reopen_job(session=session, job_id=existing.id, from_states=FINISHED):
        session.refresh(existing)
        raise ConflictError(
            f"job {existing.id} already runs {source.model_name} {model_version} on "
            f"these inputs and is {existing.state.value}; wait for it to finish"
        )
    return existing, False


def _queue_deliveries(session: Session, producer: TaskProducer, delivery_ids: list[int]) -> int:
    """Send committed PENDING deliveries' ids; returns how many went. When the broker is down
    the rest say so in their reason and wait for the dispatcher."""
    for index, delivery_id in enumerate(delivery_ids):
        try:
            producer.enqueue_delivery(delivery_id)
        except (BrokerError, OSError) as exc:
            logger.warning("could not queue delivery %d, the dispatcher will: %s", delivery_id, exc)
            note_pending(session=session, delivery_ids=delivery_ids[index:], reason=AWAITING_BROKER)
            session.commit()
            return index
    return len(delivery_ids)


def retry_delivery(
    session: Session,
    producer: TaskProducer,
    delivery_id: int,
    *,
    principal: Principal,
    request: Request | None = None,
) -> Delivery:
    """Send a failed delivery again, with a fresh retry budget."""
    act = _Audited(session, principal, request, "delivery.retry", "delivery", delivery_id)
    try:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            raise NotFoundError(f"no delivery {delivery_id}")
        if not reopen_failed_delivery(session=session, delivery_id=delivery_id):
            session.refresh(delivery)
            raise ConflictError(
                _wrong_state(f"delivery {delivery_id}", delivery.state, "failed", "retried")
            )
    except OperationError as exc:
        raise act.refused(exc) from None
    act.done()
    _queue_deliveries(session, producer, [delivery_id])
    session.refresh(delivery)
    return delivery


def retry_failed_deliveries(
    session: Session,
    producer: TaskProducer,
    destination_id: int | None = None,
    *,
    principal: Principal,
    request: Request | None = None,
) -> list[int]:
    """Send every failed delivery again (oldest first, at most MAX_BULK); returns their ids."""
    if destination_id is not None and session.get(Destination, destination_id) is None:
        raise NotFoundError(f"no destination {destination_id}")
    reopened = [
        delivery_id
        for delivery_id in failed_delivery_ids(
            session=session, destination_id=destination_id, limit=MAX_BULK
        )
        if reopen_failed_delivery(session=session, delivery_id=delivery_id)
    ]
    target_type = "destination" if destination_id is not None else None
    act = _Audited(
        session, principal, request, "delivery.retry_failed", target_type, destination_id
    )
    act.done(count=len(reopened), delivery_ids=reopened[:100])
    _queue_deliveries(session, producer, reopened)
    return reopened


def post_report(
    session: Session,
    producer: TaskProducer,
    study_instance_uid: str,
    text: str,
    *,
    principal: Principal,
    request: Request | None = None,
) -> tuple[Job, bool]:
    """Keep a report posted for a stored study and queue the job that grounds it; the same text
    again re-runs nothing and returns the job made for it (False)."""
    act = _Audited(session, principal, request, "study.report", "study", None)
    try:
        study = session.scalars(
            select(Study).where(Study.study_instance_uid == study_instance_uid)
        ).one_or_none()
        if study is None:
            raise NotFoundError(f"no study {study_instance_uid}")
        made = create_report_job(
            session=session, study_id=study.id, text=text, created_by=principal.actor
        )
        if made is None:
            raise ConflictError(
                f"study {study_instance_uid} has not been analysed yet; post its report once "
                "a route has taken it"
            )
        job, created = made
        act.done(
            study_instance_uid=study_instance_uid,
            job_id=job.id,
            report_id=job.report_id,
            new_job=created,
            text_chars=len(text),
        )
    except OperationError as exc:
        raise act.refused(exc) from None
    if not created:
        return job, False
    return _queue_job(session, producer, job), True
