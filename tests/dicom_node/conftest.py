"""A real DICOM node (SCP + assembler) in this process, on a free port, on each database backend."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.migrate import upgrade
from dicom_node.node import DicomNode
from radlight.contracts import QUEUE_INFERENCE
from radlight.queue import TaskProducer
from radlight.settings import Settings
from tests.brokers import folder_messages
from tests.peers import echo_ok, free_port, require_tools, wait_for
from tests.tls_certs import Pki


def node_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "dicom_host": "127.0.0.1",
        "dicom_port": free_port(),
        "study_quiet_seconds": 3600.0,  # these tests look at ingest only
        "log_json": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def queue_settings(tmp_path: Path) -> Settings:
    """Settings whose queue is kombu's filesystem transport in tmp_path (no broker)."""
    return Settings(data_dir=tmp_path / "data", broker_url=None)


@pytest.fixture
def folder_producer(queue_settings: Settings) -> Iterator[TaskProducer]:
    queue = TaskProducer(queue_settings)
    try:
        yield queue
    finally:
        queue.close()


def queued(settings: Settings) -> list[int]:
    """The job ids on the folder queue of ``settings``."""
    return sorted(m.kwargs["job_id"] for m in folder_messages(settings.queue_dir, QUEUE_INFERENCE))


@contextlib.contextmanager
def running_node(settings: Settings) -> Iterator[DicomNode]:
    """A started node, once it answers C-ECHO; stopped afterwards."""
    dicom_node = DicomNode(settings)
    dicom_node.start()
    try:
        wait_for(lambda: echo_ok(dicom_node.settings.dicom_port), timeout=20, what="C-ECHO")
        yield dicom_node
    finally:
        dicom_node.stop()


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[DicomNode]:
    require_tools()
    with running_node(node_settings(tmp_path, database_url)) as dicom_node:
        yield dicom_node


@contextlib.contextmanager
def running_tls_node(workdir: Path, pki: Pki) -> Iterator[DicomNode]:
    """A node on SQLite whose SCP speaks only TLS and requires a client certificate from pki.ca."""
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{workdir / 'node.db'}"
    upgrade(url)
    node = DicomNode(
        node_settings(
            workdir,
            url,
            dicom_tls_cert_file=pki.server.cert,
            dicom_tls_key_file=pki.server.key,
            dicom_tls_ca_file=pki.ca,
            dicom_tls_require_client_cert=True,
        )
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()
