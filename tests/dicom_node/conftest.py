"""A real DICOM node (SCP + assembler) in this process, on a free port, on each database backend."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.node import DicomNode
from radlight.settings import Settings
from tests.peers import echo_ok, free_port, require_tools, wait_for


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
def node(tmp_path: Path, database_url: str) -> Iterator[DicomNode]:
    require_tools()
    dicom_node = DicomNode(node_settings(tmp_path, database_url))
    dicom_node.start()
    try:
        wait_for(lambda: echo_ok(dicom_node.settings.dicom_port), timeout=20, what="C-ECHO")
        yield dicom_node
    finally:
        dicom_node.stop()
