"""The SCU writing C-STORE requests itself (dicom_node/sending.py), against real pynetdicom SCPs:
the peer gets the stored bytes in PDUs no longer than its maximum, messages pynetdicom must send
still go through it, and a peer that drops or stops reading mid-message ends the send with a
transient error that says why, instead of a hang."""

import contextlib
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.scu import KeptAssociations, Outgoing, Peer, send_file
from dicom_node.sending import DirectStoreDIMSE
from dicom_node.status import STATUS_SUCCESS
from radlight.errors import TransientDeliveryError
from tests.peers import free_port
from tests.workers.conftest import copy_with_new_uids

MAX_PDU = 16384  # Orthanc's default maximum PDU length


@dataclass
class Receiver:
    port: int
    stores: list[bytes] = field(default_factory=list)  # each data set as it came
    p_data_lengths: list[int] = field(default_factory=list)  # PDU length field of each P-DATA-TF
    release: threading.Event = field(default_factory=threading.Event)
    released: int = 0  # associations the requestor released
    ae: AE | None = None


@contextlib.contextmanager
def receiver(
    sop_class: str,
    *,
    max_pdu: int = MAX_PDU,
    drop_after: int = 0,
    stall_after: int = 0,
    syntaxes: Sequence[str] = ALL_TRANSFER_SYNTAXES,
    **ae_attributes: Any,
) -> Iterator[Receiver]:
    """A pynetdicom storage SCP taking ``sop_class`` in ``syntaxes``. After ``drop_after``
    P-DATA-TF PDUs it closes the connection; after ``stall_after`` it stops reading until
    ``release`` is set. ``ae_attributes`` are set on its AE (e.g. ``network_timeout``)."""
    ae = AE(ae_title="PEER")
    ae.maximum_pdu_size = max_pdu
    for name, value in ae_attributes.items():
        setattr(ae, name, value)
    ae.add_supported_context(sop_class, list(syntaxes))
    ae.add_supported_context(Verification)
    peer = Receiver(free_port(), ae=ae)

    def on_released(event: Event) -> None:
        peer.released += 1

    def on_established(event: Event) -> None:
        # At its network timeout the SCP releases an idle association (pynetdicom aborts).
        event.assoc.network_timeout_response = "A-RELEASE"

    def on_store(event: Event) -> int:
        data = event.request.DataSet  # type: ignore[union-attr]  # a C-STORE event
        assert isinstance(data, BytesIO)
        peer.stores.append(data.getvalue())
        return STATUS_SUCCESS

    def on_pdu(event: Event) -> None:
        if not isinstance(event.pdu, P_DATA_TF):
            return
        peer.p_data_lengths.append(event.pdu.pdu_length)
        count = len(peer.p_data_lengths)
        if count == drop_after:
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        if count == stall_after:
            peer.release.wait(30)

    chunked = _config.STORE_RECV_CHUNKED_DATASET
    _config.STORE_RECV_CHUNKED_DATASET = False  # whole data sets, as they came on the wire
    handlers: list[evt.EventHandlerType] = [
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_PDU_RECV, on_pdu),
        (evt.EVT_RELEASED, on_released),
        (evt.EVT_ESTABLISHED, on_established),
    ]
    server = ae.start_server(("127.0.0.1", peer.port), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        yield peer
    finally:
        peer.release.set()
        server.shutdown()
        _config.STORE_RECV_CHUNKED_DATASET = chunked


def _stored(path: Path, ds: pydicom.Dataset) -> bytes:
    """Write ``ds`` to ``path``; returns its bytes after the file meta (what goes on the wire)."""
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    with BytesIO(data) as handle:
        pydicom.filereader.read_preamble(handle, force=False)
        pydicom.filereader._read_file_meta_info(handle)
        return data[handle.tell() :]


def _large(source: Path, rows: int, columns: int) -> pydicom.Dataset:
    ds = copy_with_new_uids(source)
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 8, 8, 7, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.random.default_rng(0).integers(0, 256, (rows, columns), np.uint8).tobytes()
    return ds


@pytest.fixture
def reactor_sends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The PDU types pynetdicom's reactor writes for the requestor (the SCU) in this test."""
    sent: list[str] = []
    original = DULServiceProvider._send

    def recording(dul: DULServiceProvider, pdu: Any) -> None:
        if dul.assoc.is_requestor:
            sent.append(type(pdu).__name__)
        original(dul, pdu)

    monkeypatch.setattr(DULServiceProvider, "_send", recording)
    return sent


def test_the_peer_gets_the_stored_bytes_in_pdus_of_its_maximum_length(
    real_dicom_files: list[Path], tmp_path: Path, reactor_sends: list[str]
) -> None:
    ds = copy_with_new_uids(real_dicom_files[0])
    path = tmp_path / "result.dcm"
    wire = _stored(path, ds)
    with receiver(str(ds.SOPClassUID)) as scp:
        peer = Peer("127.0.0.1", scp.port, "PEER")
        assert send_file(peer, path, calling_ae="RADLIGHT") == STATUS_SUCCESS

    assert scp.stores == [wire]
    # The command set in one PDU, the data set in fragments of the peer's maximum PDU.
    fragment = MAX_PDU - 6
    assert len(scp.p_data_lengths) == 1 + -(-len(wire) // fragment)
    assert max(scp.p_data_lengths) == MAX_PDU
    # No P-DATA went through pynetdicom's reactor: only the association's own PDUs did.
    assert "P_DATA_TF" not in reactor_sends
    assert {"A_ASSOCIATE_RQ", "A_RELEASE_RQ"} <= set(reactor_sends)


def test_results_on_a_kept_association_arrive_whole_and_in_order(
    real_dicom_files: list[Path], tmp_path: Path
) -> None:
    """Several objects of different sizes, one after another on one association, as a job's
    results go: each arrives as stored (a peer without a PDU limit gets each in one PDU)."""
    datasets = [
        copy_with_new_uids(real_dicom_files[0]),
        copy_with_new_uids(real_dicom_files[1]),
        _large(real_dicom_files[0], 512, 700),
    ]
    paths = [tmp_path / f"{n}.dcm" for n in range(len(datasets))]
    wires = [_stored(p, ds) for p, ds in zip(paths, datasets, strict=True)]
    items = [Outgoing.of_file(p) for p in paths]
    kept = KeptAssociations(calling_ae="RADLIGHT")
    with receiver(str(datasets[0].SOPClassUID), max_pdu=0) as scp:
        peer = Peer("127.0.0.1", scp.port, "PEER")
        kept.expect(peer, [(item.sop_class_uid, item.transfer_syntax) for item in items])
        try:
            statuses = [kept.send(peer, item) for item in items]
        finally:
            kept.close()

    assert statuses == [STATUS_SUCCESS] * 3
    assert kept.opened == 1
    assert scp.stores == wires
    assert len(scp.p_data_lengths) == 6  # a command and a data set PDU each


def test_a_peer_dropping_the_connection_mid_message_is_a_transient_error(
    real_dicom_files: list[Path], tmp_path: Path
) -> None:
    path = tmp_path / "large.dcm"
    ds = _large(real_dicom_files[0], 4096, 4096)
    _stored(path, ds)
    with receiver(str(ds.SOPClassUID), drop_after=3) as scp:
        peer = Peer("127.0.0.1", scp.port, "PEER")
        with pytest.raises(TransientDeliveryError, match="no C-STORE response"):
            send_file(peer, path, calling_ae="RADLIGHT", timeout_s=10)

    assert scp.stores == []


def test_a_peer_that_stops_reading_ends_the_send_with_a_reason_not_a_hang(
    real_dicom_files: list[Path], tmp_path: Path
) -> None:
    """pynetdicom's own blocking write would wait for as long as the peer does; the direct write
    gives up after the DIMSE timeout and closes the connection. Loopback buffers take several MB,
    so the image is larger than they are."""
    path = tmp_path / "large.dcm"
    ds = _large(real_dicom_files[0], 6144, 6144)
    _stored(path, ds)
    with receiver(str(ds.SOPClassUID), stall_after=3) as scp:
        peer = Peer("127.0.0.1", scp.port, "PEER")
        with pytest.raises(TransientDeliveryError, match=r"the peer took no data for 1\.0 s"):
            send_file(peer, path, calling_ae="RADLIGHT", timeout_s=1.0)
        # The send gave up while the peer still held its read (it waits up to 30 s).
        assert not scp.release.is_set()

    assert scp.stores == []


def test_the_direct_writer_is_installed_on_the_scus_associations(
    real_dicom_files: list[Path], tmp_path: Path
) -> None:
    ds = copy_with_new_uids(real_dicom_files[0])
    path = tmp_path / "result.dcm"
    _stored(path, ds)
    kept = KeptAssociations(calling_ae="RADLIGHT")
    with receiver(str(ds.SOPClassUID)) as scp:
        peer = Peer("127.0.0.1", scp.port, "PEER")
        try:
            assert kept.send(peer, Outgoing.of_file(path)) == STATUS_SUCCESS
            (association,) = [k.assoc for k in kept._kept.values()]
            assert isinstance(association.dimse, DirectStoreDIMSE)
            assert association.dimse.write_error is None
        finally:
            kept.close()
