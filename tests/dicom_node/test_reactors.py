"""The waking reactor threads (dicom_node/reactors.py), on both sides. The SCU's against real
pynetdicom SCPs: an idle kept association waits instead of polling, still answers the peer's
release and notices its abort, and sends on either path after idling. The node's against a
pynetdicom SCU: idle it waits, busy it serves every request, and it notices a release, an abort
and its own network timeout."""

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

import dicom_node.reactors as reactors
from db.migrate import upgrade
from dicom_node.node import DicomNode
from dicom_node.scu import KeptAssociations, Outgoing, Peer, SenderAE
from dicom_node.status import STATUS_SUCCESS
from dicom_node.transport import NodeDUL
from tests.dicom_node.conftest import node_settings, running_node
from tests.dicom_node.test_sending import Receiver, receiver
from tests.peers import wait_for
from tests.workers.conftest import copy_with_new_uids


def _result(source: Path, folder: Path, name: str) -> Outgoing:
    ds = copy_with_new_uids(source)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return Outgoing.of_file(path)


@contextlib.contextmanager
def kept_to(
    first: Outgoing, **receiver_options: Any
) -> Iterator[tuple[KeptAssociations, Peer, Receiver, reactors.WakingAssociation]]:
    """A receiving SCP and a kept association to it, opened by sending ``first``."""
    kept = KeptAssociations(calling_ae="RADLIGHT")
    with receiver(first.sop_class_uid, **receiver_options) as scp:
        peer = Peer("127.0.0.1", scp.port, "PEER")
        try:
            assert kept.send(peer, first) == STATUS_SUCCESS
            (kept_one,) = kept._kept.values()
            association = kept_one.assoc
            assert isinstance(association, reactors.WakingAssociation)
            assert isinstance(association.dul, reactors.WakingDUL)
            yield kept, peer, scp, association
        finally:
            kept.close()


@pytest.fixture
def turns(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Turns of the waking reactors' loops, by thread, counted while the test runs."""
    counted = {"upper layer": 0, "association": 0}
    wait_for_work = reactors.WakingDUL._wait_for_work
    idle_timer_expired = reactors.WakingDUL.idle_timer_expired

    def counted_wait(dul: reactors.WakingDUL) -> None:
        counted["upper layer"] += 1
        wait_for_work(dul)

    def counted_check(dul: reactors.WakingDUL) -> bool:  # once per turn of the association's
        counted["association"] += 1
        return idle_timer_expired(dul)

    monkeypatch.setattr(reactors.WakingDUL, "_wait_for_work", counted_wait)
    monkeypatch.setattr(reactors.WakingDUL, "idle_timer_expired", counted_check)
    return counted


def _idle_turns(turns: dict[str, int]) -> dict[str, int]:
    """The turns each thread makes in one idle second."""
    time.sleep(0.5)
    turns.update({"upper layer": 0, "association": 0})
    time.sleep(1.0)
    return dict(turns)


def test_an_idle_kept_association_waits_instead_of_polling(
    real_dicom_files: list[Path], tmp_path: Path, turns: dict[str, int]
) -> None:
    with kept_to(_result(real_dicom_files[0], tmp_path, "result")) as (_, _, scp, _):
        idle = _idle_turns(turns)
    # pynetdicom's threads turn about 1,000 times a second each; waiting, ~50 (IDLE_WAIT_S).
    assert 0 < idle["upper layer"] < 200, idle
    assert 0 < idle["association"] < 200, idle
    assert scp.released == 1  # our release still went out and was answered


def test_the_peers_release_of_an_idle_association_is_answered_and_a_new_one_opened(
    real_dicom_files: list[Path], tmp_path: Path
) -> None:
    first = _result(real_dicom_files[0], tmp_path, "first")
    second = _result(real_dicom_files[1], tmp_path, "second")
    # The SCP releases an association idle for its network timeout.
    with kept_to(first, network_timeout=0.5) as (kept, peer, scp, association):
        wait_for(lambda: association.is_released, timeout=10, what="the peer's release")
        assert not association.is_established
        assert not association.is_aborted

        assert kept.send(peer, second) == STATUS_SUCCESS
        assert kept.opened == 2
    assert len(scp.stores) == 2


@pytest.mark.parametrize("how", ["abort", "connection closed"])
def test_an_idle_association_notices_the_peer_going_away(
    real_dicom_files: list[Path], tmp_path: Path, how: str
) -> None:
    item = _result(real_dicom_files[0], tmp_path, "result")
    with kept_to(item) as (kept, peer, scp, association):
        time.sleep(0.2)  # idle: its reactors wait at their longest
        assert scp.ae is not None
        (theirs,) = scp.ae.active_associations
        if how == "abort":
            theirs.abort()
        else:
            theirs.dul.socket.socket.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

        wait_for(lambda: association.is_aborted, timeout=10, what=f"the {how}")
        assert not association.is_established
        wait_for(lambda: not association.dul.is_alive(), timeout=10, what="the DUL to end")
        # The next result goes on a new association.
        assert kept.send(peer, item) == STATUS_SUCCESS
        assert kept.opened == 2


@pytest.mark.parametrize(
    ("syntax", "path"),
    [(ExplicitVRLittleEndian, "direct C-STORE writes"), (ImplicitVRLittleEndian, "re-encoded")],
)
def test_after_idling_both_sending_paths_deliver(
    real_dicom_files: list[Path], tmp_path: Path, syntax: str, path: str
) -> None:
    """The direct C-STORE writes, and pynetdicom's own path (re-encoding for a peer that takes
    only Implicit VR), both after the association has idled; their contents arrive whole."""
    opener = _result(real_dicom_files[0], tmp_path, "opener")
    item = _result(real_dicom_files[1], tmp_path, "item")
    with kept_to(opener, syntaxes=[syntax]) as (kept, peer, scp, _):
        time.sleep(0.2)
        assert kept.send(peer, item) == STATUS_SUCCESS, path
    sent = pydicom.dcmread(item.path)
    received = pydicom.dcmread(io.BytesIO(scp.stores[-1]), force=True)
    assert received.SOPInstanceUID == sent.SOPInstanceUID
    assert received.PixelData == sent.PixelData


@pytest.fixture
def sqlite_node(tmp_path: Path) -> Iterator[DicomNode]:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url)
    with running_node(node_settings(tmp_path, url, network_timeout_s=2.0)) as node:
        yield node


@contextlib.contextmanager
def associated(node: DicomNode) -> Iterator[tuple[Association, reactors.WakingAssociation]]:
    """RadLight's SCU's association to the node (the waking reactors on both sides; pynetdicom's
    own reactor can take a response meant for ``send_c_echo``, see ``WakingAssociation``), and
    the node's side of it."""
    ae = SenderAE(ae_title="PACS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.settings.dicom_port, ae_title="RADLIGHT")
    assert assoc.is_established
    ours = assoc.dul.socket.socket.getsockname()  # type: ignore[union-attr]

    def acceptor() -> Association | None:
        candidates: list[Association] = node._server.active_associations
        for candidate in candidates:
            sock = getattr(candidate.dul.socket, "socket", None)
            with contextlib.suppress(OSError):
                if sock is not None and sock.getpeername() == ours:
                    return candidate
        return None

    try:
        theirs = wait_for(acceptor, timeout=10, what="the node's side of the association")
        assert isinstance(theirs, reactors.WakingAssociation)
        assert isinstance(theirs.dul, NodeDUL)
        yield assoc, theirs
    finally:
        if assoc.is_established:
            assoc.release()


@pytest.mark.integration
def test_the_nodes_association_waits_when_idle_and_serves_every_request(
    sqlite_node: DicomNode, turns: dict[str, int]
) -> None:
    with associated(sqlite_node) as (assoc, theirs):
        idle = _idle_turns(turns)
        statuses = [assoc.send_c_echo().Status for _ in range(50)]
        assert statuses == [STATUS_SUCCESS] * 50
        assoc.release()
        assert assoc.is_released
        wait_for(lambda: theirs.is_released, timeout=10, what="the node's side released")
        wait_for(lambda: not theirs.dul.is_alive(), timeout=10, what="the node's upper layer")
    assert 0 < idle["upper layer"] < 200, idle
    assert 0 < idle["association"] < 200, idle


@pytest.mark.integration
def test_the_node_notices_the_peer_aborting(sqlite_node: DicomNode) -> None:
    with associated(sqlite_node) as (assoc, theirs):
        time.sleep(0.2)  # idle: its reactors wait at their longest
        assoc.abort()
        wait_for(lambda: theirs.is_aborted, timeout=10, what="the node seeing the abort")
        wait_for(lambda: not theirs.dul.is_alive(), timeout=10, what="the node's upper layer")


@pytest.mark.integration
def test_the_node_ends_an_association_idle_for_its_network_timeout(sqlite_node: DicomNode) -> None:
    with associated(sqlite_node) as (assoc, theirs):
        wait_for(lambda: not assoc.is_established, timeout=15, what="the node's timeout")
        assert not theirs.is_established
        wait_for(lambda: not theirs.dul.is_alive(), timeout=10, what="the node's upper layer")


class _ClearedAsItReturns(threading.Event):
    """A reactor checkpoint that a send_*() clears just after the reactor's wait returned: the
    window in which pynetdicom's reactor takes the response the send is waiting for."""

    def __init__(self) -> None:
        super().__init__()
        self.set()
        self.raced = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        if passed and not self.raced.is_set():
            self.clear()  # the sender pauses the reactor here, too late for the wait
            self.raced.set()
        return passed


@pytest.mark.integration
def test_a_response_queued_while_a_send_pauses_the_reactor_is_left_to_the_send(
    sqlite_node: DicomNode,
) -> None:
    with associated(sqlite_node) as (assoc, _):
        assert isinstance(assoc, reactors.WakingAssociation)
        served: list[object] = []
        assoc._serve_request = lambda msg, context_id: served.append(msg)  # type: ignore[method-assign]
        response = C_ECHO()
        response.MessageIDBeingRespondedTo = 1
        response.Status = STATUS_SUCCESS
        assoc.dimse.msg_queue.put((1, response))
        checkpoint = _ClearedAsItReturns()
        assoc._reactor_checkpoint = checkpoint
        assoc._work.set()
        assert checkpoint.raced.wait(timeout=10)
        time.sleep(0.2)  # the reactor is paused now; before the fix it had served the response
        assert served == []
        assert assoc.dimse.get_msg(block=False) == (1, response)  # still there for the send
        checkpoint.set()
        statuses = [assoc.send_c_echo().Status for _ in range(3)]
        assert statuses == [STATUS_SUCCESS] * 3
