"""The fast ingest path: chunked receive into the store, header-only checks, socket options,
several listener processes on one port. Speed itself is measured in bench/bench_ingest.py."""

import contextlib
import copy
import hashlib
import os
import socket
import struct
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from db.migrate import upgrade
from db.models import Instance
from db.session import make_engine
from dicom_node.headers import read_header_file
from dicom_node.incoming import SPARE_FILES, IncomingFile
from dicom_node.node import DicomNode
from dicom_node.scp import make_ae
from dicom_node.status import STATUS_OUT_OF_RESOURCES
from dicom_node.store import InstanceStore
from dicom_node.transport import _Contexts, _p_data_views
from radlight.errors import MalformedInstanceError
from radlight.settings import Settings
from tests.peers import dicom_env, echo_ok, free_port, radlight_service, storescu, wait_for

DX = UID("1.2.840.10008.5.1.4.1.1.1.1")


def _large_dx(source: Path, target: Path, size: int = 2048) -> pydicom.Dataset:
    """A 12-bit SIZE x SIZE DX (8 MB at 2048) made from a real image, with new UIDs."""
    ds = pydicom.dcmread(source)
    pixels = np.kron(ds.pixel_array.astype("<u2") * 16, np.ones((2, 2), dtype="<u2"))
    pixels = pixels[:size, :size]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DX
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(target, enforce_file_format=True)
    return ds


def _bytes_read_by_this_process() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_large_instance_is_received_to_disk_and_recorded_with_its_hash(
    node: DicomNode, real_dicom_files: list[Path], tmp_path: Path
) -> None:
    sent = _large_dx(real_dicom_files[0], tmp_path / "large.dcm")
    assert storescu(node.settings.dicom_port, tmp_path / "large.dcm").returncode == 0
    with node.sessions() as session:
        instance = session.scalars(select(Instance)).one()
    stored = node.store.absolute(instance.relative_path)
    content = stored.read_bytes()
    assert hashlib.sha256(content).hexdigest() == instance.sha256
    assert instance.size_bytes == len(content)
    received = pydicom.dcmread(stored)
    assert received.PixelData == sent.PixelData
    assert received.SOPInstanceUID == sent.SOPInstanceUID
    # Received straight into the store's incoming/ folder and renamed: only empty spare files
    # (made ahead for the next instances) are left there.
    left = list(node.store.incoming_dir.iterdir())
    assert len(left) <= SPARE_FILES
    assert all(path.stat().st_size == 0 for path in left)


def test_header_check_reads_the_header_not_the_pixel_data(
    real_dicom_files: list[Path], tmp_path: Path
) -> None:
    path = tmp_path / "large.dcm"
    ds = _large_dx(real_dicom_files[0], path)
    before = _bytes_read_by_this_process()
    header = read_header_file(
        path, expected_sop_class_uid=DX, expected_sop_instance_uid=ds.SOPInstanceUID
    )
    read = _bytes_read_by_this_process() - before
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert read < 1024 * 1024 < path.stat().st_size

    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size - 1000])
    with pytest.raises(MalformedInstanceError, match="truncated: element 7FE00010"):
        read_header_file(
            truncated, expected_sop_class_uid=DX, expected_sop_instance_uid=ds.SOPInstanceUID
        )


def test_p_data_pdus_are_split_into_views_and_malformed_ones_refused() -> None:
    fragments = [(1, b"\x02" + b"pixel" * 100), (3, b"\x03command")]
    items = b"".join(
        struct.pack(">LB", len(value) + 1, context) + value for context, value in fragments
    )
    pdu = bytearray(struct.pack(">BBL", 4, 0, len(items)) + items)
    decoded = _p_data_views(memoryview(pdu))
    assert [(c, bytes(v)) for c, v in decoded.presentation_data_value_list] == fragments
    with pytest.raises(ValueError, match="does not fit"):
        _p_data_views(memoryview(pdu[:-1]))


def test_adopting_a_file_from_another_file_system_copies_it(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system to receive from")
    store = InstanceStore(tmp_path / "store")
    source = shm / f"radlight-test-{os.getpid()}-{generate_uid()}.dcm"
    source.write_bytes(b"DICM" * 1000)
    try:
        stored = store.adopt(source, "instances/1.2/1.2.3/1.2.3.4.dcm")
    finally:
        source.unlink(missing_ok=True)
    assert store.absolute(stored.relative_path).read_bytes() == b"DICM" * 1000
    assert stored.sha256 == hashlib.sha256(b"DICM" * 1000).hexdigest()
    assert not source.exists()


def test_accepted_sockets_have_tcp_nodelay(node: DicomNode) -> None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.settings.dicom_port, ae_title="RADLIGHT")
    assert assoc.is_established
    try:
        server = node._server
        ours = assoc.dul.socket.socket.getsockname()  # type: ignore[union-attr]

        def accepted_socket() -> socket.socket | None:
            # The acceptor of this association: the node may still hold earlier tests' ones,
            # being torn down, their sockets already gone.
            for acceptor in server.active_associations:
                sock: socket.socket | None = getattr(acceptor.dul.socket, "socket", None)
                with contextlib.suppress(OSError):
                    if sock is not None and sock.getpeername() == ours:
                        return sock
            return None

        sock = wait_for(accepted_socket, timeout=10, what="the acceptor")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()


def _listening(port: int) -> int:
    local = f":{port:04X}"
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(local) and row[3] == "0A")


@pytest.mark.integration
@pytest.mark.slow
def test_several_listener_processes_share_the_port(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    # One backend: the listeners share the node's database like any two connections.
    database_url = f"sqlite:///{tmp_path / 'radlight.db'}"
    upgrade(database_url)
    port = free_port()
    env = {
        **dicom_env(),
        "RADLIGHT_DATA_DIR": str(tmp_path / "data"),
        "RADLIGHT_DATABASE_URL": database_url,
        "RADLIGHT_DICOM_HOST": "127.0.0.1",
        "RADLIGHT_DICOM_PORT": str(port),
        "RADLIGHT_DICOM_LISTENERS": "2",
        "RADLIGHT_STUDY_QUIET_SECONDS": "3600",
    }
    files = []
    for index in range(8):
        ds = pydicom.dcmread(real_dicom_files[index % 2])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files.append(tmp_path / f"{index}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    with radlight_service(env, tmp_path, "dicom-node") as node:
        wait_for(lambda: _listening(port) == 2, timeout=60, what="two listening processes")
        node.assert_alive()
        assert echo_ok(port)
        senders = [
            subprocess.Popen(
                ["/usr/bin/storescu", "-aec", "RADLIGHT", "127.0.0.1", str(port), *map(str, share)],
                env=dicom_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for share in (files[0::4], files[1::4], files[2::4], files[3::4])
        ]
        assert [sender.wait(timeout=120) for sender in senders] == [0, 0, 0, 0], node.log()
    # The extra listener stopped with the node: nothing listens on the port any more.
    wait_for(lambda: _listening(port) == 0, timeout=30, what="the listeners to stop")
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            uids = set(connection.scalars(select(Instance.sop_instance_uid)))
    finally:
        engine.dispose()
    assert uids == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}


def test_a_full_disk_while_receiving_answers_out_of_resources(
    node: DicomNode, real_dicom_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills up mid-transfer (here /dev/full, which fails every write with ENOSPC)
    gets 0xA700 on the wire, not an aborted association; the node then goes on."""
    original_write = IncomingFile.write

    def write_to_full_disk(self: IncomingFile, data: bytes | bytearray | memoryview) -> int:
        if self.file.name != "/dev/full":
            self.file.close()
            self.file = open("/dev/full", "wb", buffering=0)  # noqa: SIM115 - closed by close()
        return original_write(self, data)

    monkeypatch.setattr(IncomingFile, "write", write_to_full_disk)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(pydicom.dcmread(real_dicom_files[0]).SOPClassUID)
    assoc = ae.associate("127.0.0.1", node.settings.dicom_port, ae_title="RADLIGHT")
    assert assoc.is_established
    try:
        response = assoc.send_c_store(pydicom.dcmread(real_dicom_files[0]))
        assert int(response.Status) == STATUS_OUT_OF_RESOURCES
    finally:
        assoc.release()
    monkeypatch.undo()
    assert storescu(node.settings.dicom_port, real_dicom_files[1]).returncode == 0
    with node.sessions() as session:
        assert len(session.scalars(select(Instance)).all()) == 1


def test_per_association_copy_of_the_contexts_is_independent() -> None:
    contexts = make_ae(Settings(data_dir=Path("unused"))).supported_contexts
    copied = copy.deepcopy(_Contexts(contexts))
    assert [(c.abstract_syntax, c.transfer_syntax) for c in copied] == [
        (c.abstract_syntax, c.transfer_syntax) for c in contexts
    ]
    copied[0].result = 0x00
    copied[0].transfer_syntax.append(ExplicitVRLittleEndian)
    assert contexts[0].result is None
    assert len(contexts[0].transfer_syntax) == len(copied[0].transfer_syntax) - 1
