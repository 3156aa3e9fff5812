"""The live calling-AE allow-list on SQLite and PostgreSQL: settings plus database, the refresh
period, a database that fails, and a node that refuses associations it cannot check."""

import subprocess
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from db.models import AllowedCallingAE
from db.session import make_engine, make_session_factory, transaction
from dicom_node.allow_list import CallingAEAllowList
from dicom_node.node import DicomNode
from tests.dicom_node.conftest import node_settings
from tests.peers import ECHOSCU, dicom_env, require_tools


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def allow(sessions: sessionmaker[Session], *titles: str) -> None:
    with transaction(sessions) as session:
        session.add_all(AllowedCallingAE(ae_title=t) for t in titles)


def test_settings_and_database_entries_together_re_read_after_the_ttl(
    sessions: sessionmaker[Session],
) -> None:
    clock = Clock()
    allow_list = CallingAEAllowList([" PACS ", ""], ttl_s=5.0, clock=clock)
    assert allow_list.titles() == ["PACS"]  # before the first read: the settings only

    assert allow_list.refresh(sessions) is True
    assert allow_list.accepts("PACS")
    assert not allow_list.accepts("MODALITY1")

    allow(sessions, "MODALITY1")
    clock.now += 4.9
    assert allow_list.refresh(sessions) is True
    assert not allow_list.accepts("MODALITY1")  # still the cached list
    clock.now += 0.2
    allow_list.refresh(sessions)
    assert allow_list.titles() == ["MODALITY1", "PACS"]
    assert allow_list.accepts("MODALITY1 ")


def test_empty_everywhere_accepts_any(sessions: sessionmaker[Session]) -> None:
    allow_list = CallingAEAllowList()
    assert allow_list.refresh(sessions) is True
    assert allow_list.titles() == []
    assert allow_list.accepts("ANYONE")


def test_an_unreadable_database_keeps_the_last_list_or_says_it_has_none(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    clock = Clock()
    allow(sessions, "MODALITY1")
    allow_list = CallingAEAllowList(ttl_s=1.0, clock=clock)
    assert allow_list.refresh(sessions)

    broken_engine = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'nothing.db'}")
    broken = make_session_factory(broken_engine)
    try:
        clock.now += 2
        assert allow_list.refresh(broken) is True  # the last list read stays in force
        assert allow_list.titles() == ["MODALITY1"]

        never_read = CallingAEAllowList(["PACS"], clock=clock)
        assert never_read.refresh(broken) is False
    finally:
        broken_engine.dispose()


def test_the_node_refuses_associations_when_it_cannot_read_the_list(
    tmp_path: Path, database_url: str
) -> None:
    """Rather than accept strangers, a transient A-ASSOCIATE-RJ the sender may retry."""
    require_tools()
    settings = node_settings(tmp_path, database_url)
    node = DicomNode(settings)
    node.start()
    try:
        with node.engine.begin() as conn:  # the table disappears under the running node
            conn.execute(text("DROP TABLE allowed_calling_ae"))
        refused = subprocess.run(
            [ECHOSCU, "-aet", "PACS", "-aec", "RADLIGHT", "127.0.0.1", str(settings.dicom_port)],
            capture_output=True,
            text=True,
            env=dicom_env(),
            timeout=30,
            check=False,
        )
        assert refused.returncode != 0
        assert "rejected transient" in (refused.stdout + refused.stderr).lower()
    finally:
        node.stop()
