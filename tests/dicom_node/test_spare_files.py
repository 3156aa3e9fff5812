"""Files made ahead to receive into (dicom_node/incoming.py ``SpareFiles``): taken open and
empty, made again, never handed out once removed, gone when the node stops, and never needed:
without them the receiver makes its own."""

import logging
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from db.migrate import upgrade
from db.models import Instance
from dicom_node.incoming import PREFIX, SpareFiles
from tests.dicom_node.conftest import node_settings, running_node
from tests.peers import storescu, wait_for


def _spares_in(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"{PREFIX}*"))


def test_spares_are_taken_open_and_empty_and_made_again(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path, count=3)
    try:
        wait_for(lambda: spares.ready() == 3, timeout=10, what="three spares")
        taken = spares.take()
        assert taken is not None
        fd, name = taken
        assert Path(name).parent == tmp_path
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"received")
        os.close(fd)
        assert Path(name).read_bytes() == b"received"
        wait_for(lambda: spares.ready() == 3, timeout=10, what="the spare made again")
        assert len(_spares_in(tmp_path)) == 4  # three spares and the taken file
    finally:
        spares.close()


def test_a_spare_removed_meanwhile_is_never_handed_out(tmp_path: Path) -> None:
    """Another process's start-up sweep may delete them: a file no longer in the folder would
    take a whole instance and then fail to move into the store."""
    spares = SpareFiles(tmp_path, count=2)
    try:
        wait_for(lambda: spares.ready() == 2, timeout=10, what="two spares")
        removed = set(map(str, _spares_in(tmp_path)))
        for path in removed:
            os.unlink(path)
        for _ in range(2):
            taken = spares.take()
            if taken is not None:  # one made after the sweep
                assert taken[1] not in removed
                assert Path(taken[1]).exists()
                os.close(taken[0])
    finally:
        spares.close()


def test_closing_removes_the_spares_not_taken(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path, count=4)
    wait_for(lambda: spares.ready() == 4, timeout=10, what="four spares")
    spares.close()
    assert _spares_in(tmp_path) == []
    assert spares.take() is None


def test_a_folder_that_cannot_hold_spares_is_logged_once_and_nothing_is_handed_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_node.incoming")
    spares = SpareFiles(tmp_path / "missing", count=2)
    try:
        wait_for(lambda: caplog.records, timeout=10, what="the warning")
        assert spares.take() is None
    finally:
        spares.close()
    assert [r.getMessage() for r in caplog.records] == [
        "cannot make spare files to receive into: No such file or directory"
    ]


@pytest.mark.integration
def test_the_node_receives_into_spares_and_leaves_none_when_it_stops(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url)
    with running_node(node_settings(tmp_path, url)) as node:
        incoming = node.store.incoming_dir
        wait_for(lambda: _spares_in(incoming), timeout=10, what="spare files")
        before = set(_spares_in(incoming))
        assert storescu(node.settings.dicom_port, real_dicom_files[0]).returncode == 0
        with node.sessions() as session:
            (instance,) = session.scalars(select(Instance)).all()
        # The instance arrived in one of the spares made before it, now gone from incoming/.
        assert not before <= set(_spares_in(incoming))
        assert node.store.absolute(instance.relative_path).stat().st_size > 0
    assert _spares_in(incoming) == []
