"""Study assembly and dispatch with a real queue producer on the real Redis (database 14), on SQLite
and PostgreSQL: quiet studies become jobs, committed jobs reach the queue, a broker outage loses
nothing, stalled jobs are queued again. Routing rules are checked directly as well.
"""

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.config import upsert_route
from db.ingest import ReceivedInstance, record_instance
from db.jobs import claim_job, create_job_if_new, renew_lease
from db.models import Job, JobState, Route, Study, StudyState, utcnow
from db.session import transaction
from dicom_node.assembly import Assembler
from dicom_node.routing import InstanceFacts, StudyFacts, select_inputs
from radlight.contracts import QUEUE_DELIVERY, QUEUE_INFERENCE, TASK_PROCESS_JOB
from radlight.queue import TaskProducer
from radlight.settings import Settings
from tests.brokers import clean_redis, redis_lists

DOWN_BROKER_URL = "redis://127.0.0.1:1/0"
QUIET_S = 60.0
REQUEUE_AFTER_S = 300.0
DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SC = "1.2.840.10008.5.1.4.1.1.7"
SR = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    """This test's private Redis, its queues emptied before and after the test."""
    with clean_redis(redis_url) as client:
        yield client


def producer_for(tmp_path: Path, broker_url: str) -> TaskProducer:
    return TaskProducer(Settings(data_dir=tmp_path / "data", broker_url=broker_url))


@pytest.fixture
def producer(tmp_path: Path, redis_url: str, broker: redis.Redis) -> Iterator[TaskProducer]:
    queue = producer_for(tmp_path, redis_url)
    try:
        yield queue
    finally:
        queue.close()


def assembler(sessions: sessionmaker[Session], queue: TaskProducer) -> Assembler:
    return Assembler(sessions, queue, quiet_seconds=QUIET_S, requeue_after_s=REQUEUE_AFTER_S)


def receive(
    sessions: sessionmaker[Session],
    study_uid: str,
    *,
    modality: str = "DX",
    sop_class_uid: str = DX,
    calling_ae: str = "PACS",
    called_ae: str = "RADLIGHT",
    series_uid: str | None = None,
) -> str:
    """Record one received instance (its bytes are not needed here); returns its SOP UID."""
    sop_uid = generate_uid()
    received = ReceivedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid or generate_uid(),
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        body_part_examined="CHEST",
        view_position="PA",
        relative_path=f"instances/{sop_uid}.dcm",
        size_bytes=1,
        sha256="0" * 64,
        calling_ae=calling_ae,
        called_ae=called_ae,
    )
    with transaction(sessions) as session:
        record_instance(received, session=session)
    return sop_uid


def make_quiet(
    sessions: sessionmaker[Session], study_uid: str, seconds: float = 2 * QUIET_S
) -> None:
    """The study's last instance arrived ``seconds`` ago."""
    with transaction(sessions) as session:
        session.execute(
            update(Study)
            .where(Study.study_instance_uid == study_uid)
            .values(last_received_at=utcnow() - timedelta(seconds=seconds))
        )


def add_route(sessions: sessionmaker[Session], name: str, **matchers: object) -> None:
    with transaction(sessions) as session:
        upsert_route(session=session, name=name, model_name="tiny", **matchers)  # type: ignore[arg-type]


def study(sessions: sessionmaker[Session], study_uid: str) -> Study:
    with sessions() as session:
        row = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        return row


def jobs(sessions: sessionmaker[Session]) -> list[Job]:
    with sessions() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def queued_job_ids(client: redis.Redis) -> list[int]:
    """Job ids waiting in the inference queue; fails if anything sits in another list."""
    lists = redis_lists(client)
    assert set(lists) <= {QUEUE_INFERENCE}, lists
    messages = lists.get(QUEUE_INFERENCE, [])
    assert {m.task for m in messages} <= {TASK_PROCESS_JOB}
    return sorted(m.kwargs["job_id"] for m in messages)


# -- assembly and dispatch -----------------------------------------------------------------------


def test_quiet_study_becomes_one_job_that_is_queued(
    sessions: sessionmaker[Session], producer: TaskProducer, broker: redis.Redis
) -> None:
    add_route(sessions, "chest", modalities=["DX", "CR"])
    study_uid = generate_uid()
    uids = sorted(receive(sessions, study_uid) for _ in range(2))
    node = assembler(sessions, producer)

    # Still receiving (last instance just now): nothing happens yet.
    assert node.assemble() == []
    assert study(sessions, study_uid).state is StudyState.RECEIVING

    make_quiet(sessions, study_uid)
    created = node.assemble()

    assert len(created) == 1
    (job,) = jobs(sessions)
    assert (job.id, job.state, job.input_sop_instance_uids) == (created[0], JobState.PENDING, uids)
    done = study(sessions, study_uid)
    assert (done.state, done.reason) == (StudyState.COMPLETE, None)
    assert done.completed_at is not None
    assert queued_job_ids(broker) == []  # committed first, queued by dispatch

    assert node.dispatch() == 1

    (job,) = jobs(sessions)
    assert job.state is JobState.QUEUED
    assert job.queued_at is not None
    assert queued_job_ids(broker) == [job.id]
    assert broker.llen(QUEUE_DELIVERY) == 0
    # Nothing more to do: a second tick queues nothing twice.
    assert node.assemble() == []
    assert node.dispatch() == 0
    assert queued_job_ids(broker) == [job.id]


def test_late_instance_reopens_the_study_and_a_repeat_makes_no_job(
    sessions: sessionmaker[Session], producer: TaskProducer
) -> None:
    add_route(sessions, "chest")
    study_uid = generate_uid()
    first = receive(sessions, study_uid)
    make_quiet(sessions, study_uid)
    node = assembler(sessions, producer)
    assert len(node.assemble()) == 1

    late = receive(sessions, study_uid)
    assert study(sessions, study_uid).state is StudyState.RECEIVING
    make_quiet(sessions, study_uid)
    assert len(node.assemble()) == 1
    assert [j.input_sop_instance_uids for j in jobs(sessions)] == [[first], sorted([first, late])]

    # The same instances again (a re-send): re-assembled, but the input set is known.
    with sessions() as session:
        assert session.scalar(select(Study.instance_count)) == 2
    with transaction(sessions) as session:
        session.execute(update(Study).values(state=StudyState.RECEIVING))
    make_quiet(sessions, study_uid)
    assert node.assemble() == []
    assert len(jobs(sessions)) == 2
    assert study(sessions, study_uid).state is StudyState.COMPLETE


def test_broker_down_keeps_the_job_pending_until_the_broker_is_back(
    tmp_path: Path, sessions: sessionmaker[Session], producer: TaskProducer, broker: redis.Redis
) -> None:
    add_route(sessions, "chest")
    study_uid = generate_uid()
    receive(sessions, study_uid)
    make_quiet(sessions, study_uid)
    down = producer_for(tmp_path, DOWN_BROKER_URL)
    try:
        outage = assembler(sessions, down)
        outage.tick()  # assembles, fails to queue, does not raise
        assert outage.dispatch() == 0
    finally:
        down.close()
    (job,) = jobs(sessions)
    assert (job.state, job.queued_at) == (JobState.PENDING, None)
    assert study(sessions, study_uid).state is StudyState.COMPLETE

    assert assembler(sessions, producer).dispatch() == 1

    (job,) = jobs(sessions)
    assert job.state is JobState.QUEUED
    assert queued_job_ids(broker) == [job.id]


def test_connecting_to_a_broker_that_is_down_is_logged_not_raised(
    tmp_path: Path, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    """The assembler thread and the dispatcher connect before their first tick; a broker that is
    down must not stop them (jobs wait in the database)."""
    down = producer_for(tmp_path, DOWN_BROKER_URL)
    try:
        with caplog.at_level(logging.WARNING, logger="dicom_node.assembly"):
            assembler(sessions, down).connect_queue()
    finally:
        down.close()
    assert "cannot reach the broker yet" in caplog.text
    assert "refused" in caplog.text


def test_study_matching_no_route_is_unrouted_with_a_reason(
    sessions: sessionmaker[Session], producer: TaskProducer, broker: redis.Redis
) -> None:
    add_route(sessions, "chest-dx", modalities=["DX"])
    add_route(sessions, "disabled-ct", modalities=["CT"], enabled=False)
    study_uid = generate_uid()
    receive(sessions, study_uid, modality="CT", sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    make_quiet(sessions, study_uid)
    node = assembler(sessions, producer)

    assert node.assemble() == []
    assert node.dispatch() == 0

    unrouted = study(sessions, study_uid)
    assert unrouted.state is StudyState.UNROUTED
    assert unrouted.reason == "no enabled route matched this study"
    assert jobs(sessions) == []
    assert queued_job_ids(broker) == []


def test_routes_pick_their_instances_by_called_ae_calling_ae_and_modality(
    sessions: sessionmaker[Session], producer: TaskProducer
) -> None:
    add_route(sessions, "dx-from-pacs", calling_ae="PACS", modalities=["DX"])
    add_route(sessions, "other-sender", calling_ae="MODALITY1")
    add_route(sessions, "other-node", called_ae="RADLIGHT2")
    add_route(sessions, "sr-only", sop_class_uids=[SR])
    study_uid = generate_uid()
    dx = receive(sessions, study_uid, modality="DX")
    receive(sessions, study_uid, modality="CT", sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    sr = receive(sessions, study_uid, modality="SR", sop_class_uid=SR)
    make_quiet(sessions, study_uid)

    created = assembler(sessions, producer).assemble()

    assert len(created) == 2
    with sessions() as session:
        picked = {
            job.route.name: job.input_sop_instance_uids
            for job in session.scalars(select(Job).order_by(Job.id))
        }
    assert picked == {"dx-from-pacs": [dx], "sr-only": [sr]}


def new_job(sessions: sessionmaker[Session]) -> int:
    """A PENDING job over a freshly received study, on the only route."""
    study_uid = generate_uid()
    receive(sessions, study_uid)
    with transaction(sessions) as session:
        route = session.scalars(select(Route)).one()
        study_id = session.scalars(
            select(Study.id).where(Study.study_instance_uid == study_uid)
        ).one()
        job = create_job_if_new(
            session=session, study_id=study_id, route=route, sop_instance_uids=["1.2.3"]
        )
        assert job is not None
        return job.id


def test_stalled_running_job_is_queued_again(
    sessions: sessionmaker[Session], producer: TaskProducer, broker: redis.Redis
) -> None:
    add_route(sessions, "chest")
    stalled_id, fresh_id = 0, 0
    for stale in (True, False):
        job_id = new_job(sessions)
        with transaction(sessions) as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.state = JobState.RUNNING
            age = 2 * REQUEUE_AFTER_S if stale else 1.0
            job.updated_at = utcnow() - timedelta(seconds=age)
            session.flush()
            if stale:
                stalled_id = job.id
            else:
                fresh_id = job.id

    assert assembler(sessions, producer).dispatch() == 1

    with sessions() as session:
        stalled, fresh = session.get(Job, stalled_id), session.get(Job, fresh_id)
        assert stalled is not None
        assert fresh is not None
        assert stalled.state is JobState.QUEUED
        assert stalled.queued_at is not None
        assert fresh.state is JobState.RUNNING  # its worker is alive: left alone
    assert queued_job_ids(broker) == [stalled_id]


# -- routing rules, directly ---------------------------------------------------------------------


def route(**matchers: str | None) -> Route:
    return Route(name="r", model_name="m", **matchers)


FACTS = StudyFacts(
    called_ae="RADLIGHT",
    calling_ae="PACS",
    instances=[
        InstanceFacts("1.1", DX, "DX"),
        InstanceFacts("1.2", SC, "cr"),
        InstanceFacts("1.3", SR, "SR"),
        InstanceFacts("1.4", SC, None),
    ],
)


@pytest.mark.parametrize(
    ("matchers", "expected"),
    [
        ({}, ["1.1", "1.2", "1.3", "1.4"]),
        ({"called_ae": "RADLIGHT"}, ["1.1", "1.2", "1.3", "1.4"]),
        ({"called_ae": "OTHER"}, []),
        ({"calling_ae": "PACS"}, ["1.1", "1.2", "1.3", "1.4"]),
        ({"calling_ae": "MODALITY"}, []),
        ({"modalities": "DX,CR"}, ["1.1", "1.2"]),
        ({"modalities": " dx , Cr "}, ["1.1", "1.2"]),
        ({"modalities": "CT"}, []),
        ({"sop_class_uids": SC}, ["1.2", "1.4"]),
        ({"modalities": "DX,CR", "sop_class_uids": SC}, ["1.2"]),
        ({"called_ae": "RADLIGHT", "calling_ae": "PACS", "modalities": "SR"}, ["1.3"]),
        ({"called_ae": "RADLIGHT", "calling_ae": "OTHER", "modalities": "SR"}, []),
    ],
)
def test_select_inputs(matchers: dict[str, str], expected: list[str]) -> None:
    assert select_inputs(route(**matchers), FACTS) == expected


def test_select_inputs_with_unknown_aes_matches_only_routes_without_ae_rules() -> None:
    facts = StudyFacts(called_ae=None, calling_ae=None, instances=[InstanceFacts("1.1", DX, "DX")])
    assert select_inputs(route(), facts) == ["1.1"]
    assert select_inputs(route(calling_ae="PACS"), facts) == []
    assert select_inputs(route(called_ae="RADLIGHT"), facts) == []


def test_running_job_is_queued_again_only_when_its_lease_runs_out(
    sessions: sessionmaker[Session], producer: TaskProducer, broker: redis.Redis
) -> None:
    """The lease, not the job's age, decides: a long job whose worker renews it is left alone."""
    add_route(sessions, "chest")
    ids: dict[str, int] = {}
    for name, lease_left_s in (("dead", -1.0), ("alive", 30.0)):
        ids[name] = new_job(sessions)
        with transaction(sessions) as session:
            assert claim_job(session=session, job_id=ids[name], worker=f"w-{name}", lease_s=60)
        with transaction(sessions) as session:
            job = session.get(Job, ids[name])
            assert job is not None
            # Both started long ago; only the dead one's worker stopped renewing.
            job.updated_at = utcnow() - timedelta(seconds=2 * REQUEUE_AFTER_S)
            job.lease_expires_at = utcnow() + timedelta(seconds=lease_left_s)

    assert assembler(sessions, producer).dispatch() == 1

    with sessions() as session:
        dead, alive = session.get(Job, ids["dead"]), session.get(Job, ids["alive"])
        assert dead is not None
        assert alive is not None
        assert dead.state is JobState.QUEUED
        assert dead.lease_expires_at is None
        assert dead.reason is not None
        assert "worker w-dead lost its lease" in dead.reason
        assert alive.state is JobState.RUNNING
        with transaction(sessions) as tx:
            # The dead worker cannot renew a lease it lost; the live one can.
            assert not renew_lease(session=tx, job_id=dead.id, worker="w-dead", lease_s=60)
            assert renew_lease(session=tx, job_id=alive.id, worker="w-alive", lease_s=60)
    assert queued_job_ids(broker) == [ids["dead"]]
