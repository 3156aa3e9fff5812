"""Study assembly and dispatch: quiet studies are routed into jobs, committed jobs are queued.

Runs in the node process on its own thread, never on an association's thread. The database is the
source of truth: a job is committed before its id is queued, and jobs that were committed but never
queued (broker down) or that stalled (worker died) are queued again on a later tick.
"""

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.config import enabled_routes
from db.deliveries import requeue_delivery, stale_deliveries
from db.ingest import study_instances
from db.jobs import create_job_if_new, mark_queued, requeue_candidates, reset_stale
from db.models import Instance, Job, JobState, Route, Study, StudyState, utcnow
from db.readiness import ready_studies, work_waiting
from db.session import transaction
from dicom_node.routing import InstanceFacts, StudyFacts, select_inputs
from radlight.logs import log_context

logger = logging.getLogger(__name__)


class JobQueue(Protocol):
    def enqueue_job(self, job_id: int) -> None: ...

    def enqueue_delivery(self, delivery_id: int) -> None: ...


def study_facts(study: Study, instances: list[Instance]) -> StudyFacts:
    """What routing rules look at, from the recorded rows (body part is recorded per series)."""
    return StudyFacts(
        called_ae=study.called_ae,
        calling_ae=study.calling_ae,
        instances=[
            InstanceFacts(
                i.sop_instance_uid,
                i.sop_class_uid,
                i.series.modality,
                body_part=i.series.body_part_examined,
                view_position=i.view_position,
                patient_age_years=i.patient_age_years,
            )
            for i in instances
        ],
    )


def _stall_reason(job: Job) -> str:
    """Why a QUEUED or RUNNING job is queued again, as the API shows it."""
    if job.state is JobState.RUNNING and job.lease_expires_at is not None:
        return (
            f"worker {job.worker or '?'} lost its lease (no heartbeat since "
            f"{job.updated_at:%Y-%m-%dT%H:%M:%SZ}): queued again"
        )
    return f"no progress in state {job.state.value} since {job.updated_at:%Y-%m-%dT%H:%M:%SZ}: queued again"


class Assembler:
    """Turns quiet studies into jobs and keeps every committed job on the queue."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        queue: JobQueue,
        *,
        quiet_seconds: float,
        requeue_after_s: float,
    ) -> None:
        self._sessions = sessions
        self._queue = queue
        self._quiet = timedelta(seconds=quiet_seconds)
        self._requeue_after = timedelta(seconds=requeue_after_s)
        # What the last full pass read from the routes, for the cheap check between passes.
        self._shortest_quiet = self._quiet
        self._min_expected: int | None = None

    def quiet_for(self, route: Route) -> timedelta:
        """How long a study must be silent before ``route`` takes it: its own, else the node's."""
        if route.quiet_seconds is None:
            return self._quiet
        return timedelta(seconds=route.quiet_seconds)

    @staticmethod
    def expected_reached(route: Route, inputs: Sequence[str]) -> bool:
        """Whether ``route`` has all the instances it expects (its ``expected_instances``)."""
        return route.expected_instances is not None and len(inputs) >= route.expected_instances

    def assemble(self) -> list[int]:
        """Route every study quiet for long enough, or holding the instances a route expects;
        returns the ids of new jobs.

        Routes are read from the database on every pass, so a change made through the API or
        the CLI applies to the next study without a restart. A study becomes a candidate once
        quiet for the shortest period of the node and of any enabled route; each route then takes
        it when quiet for its own period, and the study stays open until every route that wants
        it has had it (see :meth:`_route_study`).
        """
        created: list[int] = []
        now = utcnow()
        with transaction(self._sessions) as session:
            routes = enabled_routes(session=session)
            shortest = min([self._quiet, *(self.quiet_for(r) for r in routes)])
            expected = [r.expected_instances for r in routes if r.expected_instances is not None]
            self._shortest_quiet, self._min_expected = shortest, min(expected, default=None)
            studies = ready_studies(
                session=session, received_before=now - shortest, min_instances=self._min_expected
            )
            for study in studies:
                with log_context(study_uid=study.study_instance_uid):
                    created.extend(self._route_study(session, study, routes, now))
        return created

    def _route_study(
        self, session: Session, study: Study, routes: list[Route], now: datetime
    ) -> list[int]:
        """Create the jobs of the routes that are due; close the study when none is waiting."""
        facts = study_facts(study, study_instances(session=session, study_id=study.id))
        wanted = [(route, select_inputs(route, facts)) for route in routes]
        wanted = [(route, inputs) for route, inputs in wanted if inputs]
        waiting = [
            r
            for r, inputs in wanted
            if study.last_received_at > now - self.quiet_for(r)
            and not self.expected_reached(r, inputs)
        ]
        created: list[int] = []
        for route, inputs in wanted:
            if route in waiting:
                continue
            job = create_job_if_new(
                session=session, study_id=study.id, route=route, sop_instance_uids=inputs
            )
            if job is None:
                # While the study waits for a slower route this repeats on every pass.
                log = logger.debug if waiting else logger.info
                log("route %s: input set already processed", route.name)
                continue
            session.flush()
            created.append(job.id)
            logger.info("route %s: job %d created", route.name, job.id)
        if waiting:
            return created
        study.state = StudyState.COMPLETE if wanted else StudyState.UNROUTED
        study.completed_at = utcnow()
        study.reason = None if wanted else "no enabled route matched this study"
        return created

    def dispatch(self) -> int:
        """Queue committed jobs not yet queued, and re-queue stalled ones; returns how many."""
        with transaction(self._sessions) as session:
            job_ids = requeue_candidates(
                session=session, stale_before=utcnow() - self._requeue_after
            )
        sent = 0
        for job_id in job_ids:
            with transaction(self._sessions) as session:
                job = session.get(Job, job_id)
                if job is None:
                    continue
                previous, reason = job.state, ""
                stale = previous in (JobState.QUEUED, JobState.RUNNING)
                if stale:
                    # Committed before the message goes out, so the worker that receives it
                    # finds the job claimable.
                    reason = _stall_reason(job)
                    reset_stale(session=session, job_id=job_id, reason=reason)
            try:
                self._queue.enqueue_job(job_id)
            except Exception as exc:  # noqa: BLE001 - any broker error: keep the job, retry later
                logger.warning("could not queue job %d, will retry: %s", job_id, exc)
                break
            if stale:
                logger.warning("job %d stalled in %s: %s", job_id, previous.value, reason)
            else:
                with transaction(self._sessions) as session:
                    mark_queued(session=session, job_id=job_id)
            sent += 1
        return sent

    def dispatch_deliveries(self) -> int:
        """Queue deliveries that were recorded but never queued, or whose sender died."""
        now = utcnow()
        with transaction(self._sessions) as session:
            ids = stale_deliveries(
                session=session,
                pending_before=now - timedelta(seconds=60),
                sending_before=now - self._requeue_after,
            )
        sent = 0
        for delivery_id in ids:
            try:
                self._queue.enqueue_delivery(delivery_id)
            except Exception as exc:  # noqa: BLE001 - any broker error: retry on a later tick
                logger.warning("could not queue delivery %d, will retry: %s", delivery_id, exc)
                break
            with transaction(self._sessions) as session:
                requeue_delivery(session=session, delivery_id=delivery_id)
            sent += 1
        return sent

    def work_waiting(self) -> bool:
        """One cheap query between full passes: a study became ready or a job awaits the queue."""
        try:
            with self._sessions() as session:
                return work_waiting(
                    session=session,
                    received_before=utcnow() - self._shortest_quiet,
                    min_instances=self._min_expected,
                )
        except SQLAlchemyError:
            logger.exception("assembler check failed; will try again")
            return False

    def tick(self) -> None:
        try:
            self.assemble()
            self.dispatch()
            self.dispatch_deliveries()
        except SQLAlchemyError:
            logger.exception("assembly tick failed; will try again")


class AssemblerThread(threading.Thread):
    """Calls :meth:`Assembler.tick` every ``interval`` seconds until stopped, and sooner when the
    cheap check, made every ``poll`` seconds, finds a study ready or a job to queue."""

    def __init__(self, assembler: Assembler, interval: float, poll: float | None = None) -> None:
        super().__init__(name="radlight-assembler", daemon=True)
        self._assembler = assembler
        self._interval = interval
        self._poll = min(poll, interval) if poll is not None else interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        self._assembler.tick()  # at once: it also reads the routes the cheap check needs
        last = time.monotonic()
        while not self._stop_event.wait(self._poll):
            if time.monotonic() - last >= self._interval or self._assembler.work_waiting():
                self._assembler.tick()
                last = time.monotonic()

    def stop(self) -> None:
        self._stop_event.set()
