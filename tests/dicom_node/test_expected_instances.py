"""A route that says how many instances it expects takes a study as soon as they have arrived,
without waiting for the quiet period, and the assembler thread notices within its short poll
instead of its next full tick. Real database (SQLite and PostgreSQL), real queue (kombu's
filesystem transport in tmp_path).
"""

import pytest
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from db.models import JobState, StudyState
from dicom_node.assembly import Assembler, AssemblerThread
from radlight.queue import TaskProducer
from radlight.settings import Settings
from tests.dicom_node.conftest import queued
from tests.dicom_node.test_assembly import add_route, jobs, receive, study
from tests.peers import wait_for

QUIET_S = 3600.0  # never reached in these tests: only the expected count can complete a study


def test_study_is_routed_when_the_expected_instances_arrived(
    sessions: sessionmaker[Session], folder_producer: TaskProducer, queue_settings: Settings
) -> None:
    add_route(sessions, "two-views", modalities=["DX"], expected_instances=2)
    node = Assembler(sessions, folder_producer, quiet_seconds=QUIET_S, requeue_after_s=300.0)
    study_uid = generate_uid()
    first = receive(sessions, study_uid)
    assert node.assemble() == []
    assert study(sessions, study_uid).state is StudyState.RECEIVING
    assert node.work_waiting() is False  # the cheap check agrees: nothing to do yet

    # An instance the route does not take: the cheap check counts every instance, so it calls
    # for a pass, but the pass counts the route's own and still waits.
    receive(sessions, study_uid, modality="SR")
    assert node.work_waiting() is True
    assert node.assemble() == []
    assert study(sessions, study_uid).state is StudyState.RECEIVING

    second = receive(sessions, study_uid)
    assert node.work_waiting() is True
    created = node.assemble()

    (job,) = jobs(sessions)
    assert created == [job.id]
    assert job.input_sop_instance_uids == sorted([first, second])
    assert study(sessions, study_uid).state is StudyState.COMPLETE
    assert node.work_waiting() is True  # the job is committed, not yet queued
    assert node.dispatch() == 1
    assert queued(queue_settings) == [job.id]
    assert node.work_waiting() is False


def test_assembler_thread_queues_a_single_image_study_within_its_poll(
    sessions: sessionmaker[Session], folder_producer: TaskProducer, queue_settings: Settings
) -> None:
    add_route(sessions, "single", modalities=["DX"], expected_instances=1)
    node = Assembler(sessions, folder_producer, quiet_seconds=QUIET_S, requeue_after_s=300.0)
    # The full tick (which runs at start, reading the routes) is made rare: after it, only the
    # cheap poll can find the study.
    thread = AssemblerThread(node, interval=QUIET_S, poll=0.02)
    thread.start()
    try:
        wait_for(lambda: node.work_waiting() is False, timeout=10, what="the first tick")
        uid = receive(sessions, generate_uid())

        def job_queued() -> bool:
            found = jobs(sessions)
            return bool(found) and found[0].state is JobState.QUEUED

        wait_for(job_queued, timeout=10, interval=0.02, what="the job queued by the poll")
    finally:
        thread.stop()
        thread.join(timeout=10)
    (job,) = jobs(sessions)
    assert job.input_sop_instance_uids == [uid]
    assert queued(queue_settings) == [job.id]


def test_a_route_expects_at_least_one_instance(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="expected instances must be at least 1, got 0"):
        add_route(sessions, "none", expected_instances=0)
