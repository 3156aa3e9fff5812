"""Study assembly and dispatch: quiet studies are routed into jobs, committed jobs are queued.

Runs in the node process on its own thread, never on an association's thread. The database is the
source of truth: a job is committed before its id is queued, and jobs that were committed but never
queued (broker down) or that stalled (worker died) are queued again on a later tick.
"""

import collections
import logging
import math
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
from dicom_node.wakeup import WakeupReceiver, WakeupSender
from radlight.logs import log_context

logger = logging.getLogger(__name__)


class JobQueue(Protocol):
    def connect(self) -> None: ...

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

    @property
    def shortest_quiet_s(self) -> float:
        """The shortest quiet period of the node and its routes, as the last pass read them."""
        return self._shortest_quiet.total_seconds()

    @property
    def counts_instances(self) -> bool:
        """Whether a route (as the last pass read them) completes studies by an instance count."""
        return self._min_expected is not None

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

    def connect_queue(self) -> None:
        """Reach the broker before the first study needs it. One that is down is logged, not
        raised: jobs wait in the database and are queued when it answers."""
        try:
            self._queue.connect()
        except Exception as exc:  # noqa: BLE001 - any broker error, as for a send
            logger.warning("cannot reach the broker yet, jobs are queued when it answers: %s", exc)

    def tick(self) -> None:
        try:
            self.assemble()
            self.dispatch()
            self.dispatch_deliveries()
        except SQLAlchemyError:
            logger.exception("assembly tick failed; will try again")


class AssemblerThread(threading.Thread):
    """Calls :meth:`Assembler.tick` every ``interval`` seconds until stopped, and sooner when the
    cheap check finds a study ready or a job to queue.

    With ``wakeups`` (the node's C-STORE handlers wake it after each recorded instance) the
    check runs at once on a wake-up, for a route's expected instances, and again when the study
    that woke it can have been quiet for the shortest quiet period; ``poll`` is then only a
    safety net. Without them the check runs every ``poll`` seconds.
    """

    def __init__(
        self,
        assembler: Assembler,
        interval: float,
        poll: float | None = None,
        wakeups: WakeupReceiver | None = None,
    ) -> None:
        super().__init__(name="radlight-assembler", daemon=True)
        self._assembler = assembler
        self._interval = interval
        self._poll = min(poll, interval) if poll is not None else interval
        self._wakeups = wakeups
        self._stop_event = threading.Event()

    def run(self) -> None:
        self._assembler.connect_queue()
        self._assembler.tick()  # at once: it also reads the routes the cheap check needs
        last_tick = time.monotonic()
        quiet_checks = _QuietChecks(spacing=_QUIET_CHECK_SPACING_S)
        while not self._stop_event.is_set():
            now = time.monotonic()
            wake_at = min(last_tick + self._interval, now + self._poll, quiet_checks.next_due())
            woken = self._wait(wake_at - now)
            if self._stop_event.is_set():
                break
            now = time.monotonic()
            if woken:
                quiet_checks.add(now + self._assembler.shortest_quiet_s + _QUIET_MARGIN_S)
            due = quiet_checks.pop_due(now)
            # A wake-up can complete a study at once only by a route's expected count.
            counted = bool(woken) and self._assembler.counts_instances
            if now - last_tick >= self._interval or (
                (counted or due or now >= wake_at) and self._assembler.work_waiting()
            ):
                self._assembler.tick()
                last_tick = time.monotonic()
        if self._wakeups is not None:
            self._wakeups.close()

    def _wait(self, timeout: float) -> int:
        if self._wakeups is None:
            self._stop_event.wait(max(0.0, timeout))
            return 0
        return self._wakeups.wait(timeout)

    def stop(self) -> None:
        self._stop_event.set()
        if self._wakeups is not None:  # end its wait now
            sender = WakeupSender(self._wakeups.address)
            sender()
            sender.close()


# A study's readiness by quiet period is checked this long after it can first be true (the
# database's timestamps and this clock are read a little apart).
_QUIET_MARGIN_S = 0.01
# Wake-ups closer together than this share one quiet check (and the last one keeps its own).
_QUIET_CHECK_SPACING_S = 0.05


class _QuietChecks:
    """The times at which a study that woke the assembler can have become quiet: at most one per
    ``spacing`` seconds, plus always the latest, so no study waits more than ``spacing`` past
    its quiet period (or, should its wake-up be lost, past the next tick)."""

    def __init__(self, spacing: float) -> None:
        self._spacing = spacing
        self._times: collections.deque[float] = collections.deque()
        self._latest: float | None = None

    def add(self, when: float) -> None:
        self._latest = when
        if not self._times or when - self._times[-1] >= self._spacing:
            self._times.append(when)

    def next_due(self) -> float:
        return self._times[0] if self._times else math.inf

    def pop_due(self, now: float) -> bool:
        """Whether a check was due by ``now`` (the due ones are consumed)."""
        due = False
        while self._times and self._times[0] <= now:
            self._times.popleft()
            due = True
        if not self._times and self._latest is not None and self._latest > now:
            self._times.append(self._latest)  # the latest study's own check, if it was folded
        return due
