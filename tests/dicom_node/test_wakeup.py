"""The C-STORE handlers wake the node's assembler instead of it polling the database: a single-image
study is queued at once and a quiet study when its quiet period is over, with the assembler's tick
and poll set far beyond the tests' waits, so only a wake-up can explain the job. Real database
(SQLite and PostgreSQL), real queue (kombu's filesystem transport), and at the end a real node
receiving from dcmtk's storescu.
"""

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from db.models import JobState
from dicom_node.assembly import Assembler, AssemblerThread
from dicom_node.node import DicomNode
from dicom_node.wakeup import WakeupReceiver, WakeupSender, wakeup_address
from radlight.queue import TaskProducer
from radlight.settings import Settings
from tests.dicom_node.conftest import node_settings, queued
from tests.dicom_node.test_assembly import add_route, jobs, receive
from tests.peers import echo_ok, require_tools, storescu, wait_for

NEVER_S = 3600.0  # the tick and the poll: not reached within any wait of these tests


def address(tmp_path: Path) -> bytes:
    """An address of this test's own (the tmp path's inode keeps parallel tests apart)."""
    return wakeup_address(tmp_path.stat().st_ino % 65536, os.getpid())


def job_queued(sessions: sessionmaker[Session]) -> bool:
    found = jobs(sessions)
    return bool(found) and found[0].state is JobState.QUEUED


def test_wakeups_are_counted_and_consumed(tmp_path: Path) -> None:
    receiver = WakeupReceiver(address(tmp_path))
    sender = WakeupSender(receiver.address)
    try:
        assert receiver.wait(0) == 0
        for _ in range(3):
            sender()
        assert receiver.wait(5) == 3
        assert receiver.wait(0) == 0
    finally:
        sender.close()
        receiver.close()


def test_a_wakeup_nobody_listens_for_is_dropped_quietly(tmp_path: Path) -> None:
    sender = WakeupSender(address(tmp_path))
    try:
        sender()  # no receiver: ECONNREFUSED is swallowed, the database has the instance
    finally:
        sender.close()


def test_a_second_receiver_on_one_address_falls_back_to_polling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = WakeupReceiver(address(tmp_path))
    try:
        assert WakeupReceiver.open(first.address) is None
        assert "polling the database instead" in caplog.text
    finally:
        first.close()


NOBODY = 65534  # the uid of Debian's "nobody"


def send_as_another_user(address: bytes, count: int) -> int:
    """Send ``count`` wake-up datagrams to ``address`` from a child process that has dropped to
    another user; returns the child's exit status (0: all sent)."""
    pid = os.fork()
    if pid == 0:  # the child: no imports, no threads, only system calls, then _exit
        status = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            flood = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            flood.settimeout(10)  # blocks while the receiver's queue is full, never for ever
            for _ in range(count):
                flood.sendto(b"r", address)
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_a_flood_of_wakeups_from_another_user_costs_no_check(tmp_path: Path) -> None:
    # An abstract socket has no permissions: any local user can send to it. Their datagrams are
    # consumed and ignored, so they cannot make the assembler query the database.
    receiver = WakeupReceiver(address(tmp_path))
    own = WakeupSender(receiver.address)
    counted: list[int] = []
    done = threading.Event()

    def drain() -> None:
        while not done.is_set() or receiver.wait(0):
            counted.append(receiver.wait(0.05))

    drainer = threading.Thread(target=drain)
    drainer.start()
    try:
        assert send_as_another_user(receiver.address, 5000) == 0
        wait_for(lambda: receiver.ignored + sum(counted) == 5000, timeout=30, what="the flood read")
        assert sum(counted) == 0
        own()  # this user's wake-up still counts
        wait_for(lambda: sum(counted) == 1, timeout=10, what="this user's wake-up")
    finally:
        done.set()
        drainer.join(timeout=10)
        own.close()
        receiver.close()
    assert receiver.ignored == 5000


@contextlib.contextmanager
def woken_assembler(
    sessions: sessionmaker[Session], producer: TaskProducer, tmp_path: Path, quiet_s: float
) -> Iterator[WakeupSender]:
    """An assembler thread that only wake-ups can move, and the sender that wakes it; on leaving,
    the thread must have stopped at once (stop() ends its wait)."""
    assembler = Assembler(sessions, producer, quiet_seconds=quiet_s, requeue_after_s=300.0)
    receiver = WakeupReceiver(address(tmp_path))
    thread = AssemblerThread(assembler, interval=NEVER_S, poll=NEVER_S, wakeups=receiver)
    thread.start()
    wake = WakeupSender(receiver.address)
    try:
        # The first tick runs at start and reads the routes; after it only a wake-up can act.
        wait_for(lambda: assembler.work_waiting() is False, timeout=10, what="the first tick")
        yield wake
    finally:
        thread.stop()
        thread.join(timeout=10)
        wake.close()
    assert not thread.is_alive()


def test_a_wakeup_queues_a_single_image_study_at_once(
    sessions: sessionmaker[Session],
    folder_producer: TaskProducer,
    queue_settings: Settings,
    tmp_path: Path,
) -> None:
    add_route(sessions, "single", modalities=["DX"], expected_instances=1)
    with woken_assembler(sessions, folder_producer, tmp_path, quiet_s=NEVER_S) as wake:
        uid = receive(sessions, generate_uid())
        wake()
        wait_for(lambda: job_queued(sessions), timeout=20, interval=0.02, what="the job")
    (job,) = jobs(sessions)
    assert job.input_sop_instance_uids == [uid]
    assert queued(queue_settings) == [job.id]


def test_a_wakeup_queues_a_quiet_study_when_its_quiet_period_is_over(
    sessions: sessionmaker[Session],
    folder_producer: TaskProducer,
    tmp_path: Path,
) -> None:
    add_route(sessions, "quiet", modalities=["DX"])  # no expected count: the quiet period decides
    with woken_assembler(sessions, folder_producer, tmp_path, quiet_s=0.5) as wake:
        study_uid = generate_uid()
        first = receive(sessions, study_uid)
        wake()
        second = receive(sessions, study_uid)  # the study is still arriving: one job for both
        wake()
        wait_for(lambda: job_queued(sessions), timeout=20, interval=0.02, what="the job")
    (job,) = jobs(sessions)
    assert job.input_sop_instance_uids == sorted([first, second])


@pytest.mark.integration
def test_the_node_wakes_its_assembler_for_a_received_instance(
    tmp_path: Path, database_url: str, real_dicom_files: list[Path]
) -> None:
    require_tools()
    node = DicomNode(
        node_settings(
            tmp_path,
            database_url,
            broker_url=None,
            assembler_interval_s=NEVER_S,
            assembler_poll_s=NEVER_S,
        )
    )
    add_route(node.sessions, "single", modalities=["DX", "CR"], expected_instances=1)
    node.start()
    try:
        wait_for(lambda: echo_ok(node.settings.dicom_port), timeout=20, what="C-ECHO")
        ds = pydicom.dcmread(real_dicom_files[0])
        ds.StudyInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / "one.dcm"
        ds.save_as(path, enforce_file_format=True)
        sent = storescu(node.settings.dicom_port, path)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: job_queued(node.sessions), timeout=20, interval=0.02, what="the job")
    finally:
        node.stop()
    (job,) = jobs(node.sessions)
    assert job.input_sop_instance_uids == [str(ds.SOPInstanceUID)]
