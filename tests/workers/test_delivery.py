"""Delivering a stored result with the real C-STORE SCU: to a real Orthanc, to a closed port, and to
real pynetdicom storage SCPs that answer with chosen statuses or refuse the association.
"""

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    SecondaryCaptureImageStorage,
    Verification,
)
from sqlalchemy import select

from db.config import upsert_destination, upsert_route
from db.deliveries import ensure_deliveries
from db.jobs import create_job_if_new
from db.models import Delivery, DeliveryState, Result, ResultKind
from db.session import transaction
from dicom_node.status import (
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
)
from radlight.settings import Settings
from tests.page_cache import cached_pages
from tests.peers import free_port, require_tools, run_orthanc, wait_for
from tests.workers.conftest import copy_with_new_uids, receive, worker_settings
from tests.workers.test_sc_summary import heatmap_overlay_for, synthetic_findings
from workers.context import WorkerContext, build_context
from workers.delivery import deliver_result

MAX_ATTEMPTS = 3
BACKOFF_S = 0.5


@pytest.fixture
def ctx(tmp_path: Path, database_url: str) -> Iterator[WorkerContext]:
    """A worker context with a short retry budget; delivery needs no model."""
    settings: Settings = worker_settings(
        tmp_path, database_url, delivery_max_attempts=MAX_ATTEMPTS, delivery_backoff_s=BACKOFF_S
    )
    context = build_context(settings)
    try:
        yield context
    finally:
        context.producer.close()
        context.engine.dispose()


@dataclass
class StoredResult:
    delivery_id: int
    sop_instance_uid: str


def stored_result(
    ctx: WorkerContext,
    source: Path,
    *,
    host: str,
    port: int,
    ae_title: str,
    result_ds: pydicom.Dataset | None = None,
) -> StoredResult:
    """A result file in the store (``result_ds``, by default a copy of a real image) with one
    delivery to the given peer."""
    image = receive(ctx, source)
    result_ds = result_ds if result_ds is not None else copy_with_new_uids(source)
    result_uid = str(result_ds.SOPInstanceUID)
    relative = ctx.store.result_path(
        str(result_ds.StudyInstanceUID), str(result_ds.SeriesInstanceUID), result_uid
    )
    buffer = BytesIO()
    result_ds.save_as(buffer, enforce_file_format=True)
    ctx.store.write(relative, buffer.getvalue())
    with transaction(ctx.sessions) as session:
        destination = upsert_destination(
            session=session, name="pacs", host=host, port=port, ae_title=ae_title
        )
        route = upsert_route(
            session=session, name="chest", model_name="m", destination_names=["pacs"]
        )
        job = create_job_if_new(
            session=session,
            study_id=image.study_id,
            route=route,
            sop_instance_uids=[
                str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
            ],
        )
        assert job is not None
        session.flush()
        result = Result(
            job_id=job.id,
            kind=ResultKind.HEATMAP_SC,
            sop_instance_uid=result_uid,
            sop_class_uid=str(result_ds.SOPClassUID),
            series_instance_uid=str(result_ds.SeriesInstanceUID),
            relative_path=relative,
            model_name="m",
            model_version="1",
        )
        session.add(result)
        session.flush()
        (delivery,) = ensure_deliveries(session=session, result=result, destinations=[destination])
        return StoredResult(delivery.id, result_uid)


def delivery_row(ctx: WorkerContext, delivery_id: int) -> Delivery:
    with ctx.sessions() as session:
        row = session.get(Delivery, delivery_id)
        assert row is not None
        return row


@dataclass
class Scp:
    port: int
    ae_title: str
    ae: AE
    received: list[str] = field(default_factory=list)
    received_bytes: list[bytes] = field(default_factory=list)  # each data set as it came


@contextlib.contextmanager
def storage_scp(
    status: int,
    *,
    ae_title: str = "PEER",
    syntaxes: Sequence[str] = ALL_TRANSFER_SYNTAXES,
    **ae_attributes: Any,
) -> Iterator[Scp]:
    """A real pynetdicom storage SCP on a free port, accepting ``syntaxes`` and answering every
    C-STORE with ``status``."""
    ae = AE(ae_title=ae_title)
    scp = Scp(free_port(), ae_title, ae)
    lock = threading.Lock()

    def handle_store(event: Event) -> int:
        with lock:
            scp.received.append(str(event.dataset.SOPInstanceUID))
            data = event.request.DataSet  # type: ignore[union-attr]  # a C-STORE event
            assert isinstance(data, BytesIO)
            scp.received_bytes.append(data.getvalue())
        return status

    # Received whole, so the handler sees the bytes as they came: importing dicom_node.scp turns
    # pynetdicom's chunked receive on for the whole process.
    chunked = _config.STORE_RECV_CHUNKED_DATASET
    _config.STORE_RECV_CHUNKED_DATASET = False
    for name, value in ae_attributes.items():
        setattr(ae, name, value)
    ae.add_supported_context(SecondaryCaptureImageStorage, list(syntaxes))
    ae.add_supported_context(Verification)
    server = ae.start_server(
        ("127.0.0.1", scp.port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    assert server is not None
    try:
        yield scp
    finally:
        server.shutdown()
        _config.STORE_RECV_CHUNKED_DATASET = chunked


def test_delivery_to_orthanc_is_sent_and_not_sent_twice(
    ctx: WorkerContext, real_dicom_files: list[Path], tmp_path: Path
) -> None:
    require_tools()
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        item = stored_result(
            ctx,
            real_dicom_files[0],
            host="127.0.0.1",
            port=orthanc.dicom_port,
            ae_title=orthanc.ae_title,
        )

        outcome = deliver_result(item.delivery_id, ctx)

        assert outcome.state is DeliveryState.SENT
        row = delivery_row(ctx, item.delivery_id)
        assert (row.state, row.attempts, row.last_status) == (DeliveryState.SENT, 1, STATUS_SUCCESS)
        assert row.sent_at is not None
        assert row.reason is None
        with ctx.sessions() as session:
            result = session.scalars(
                select(Result).where(Result.sop_instance_uid == item.sop_instance_uid)
            ).one()
        assert cached_pages(ctx.store.absolute(result.relative_path)) == 0  # sent: dropped
        instances = orthanc.get("/instances?expand")
        assert [i["MainDicomTags"]["SOPInstanceUID"] for i in instances] == [item.sop_instance_uid]

        # A second message for the same delivery finds it sent: no claim, no second attempt.
        again = deliver_result(item.delivery_id, ctx)
        assert (again.state, again.reason) == (DeliveryState.SENT, "not claimable")
        assert delivery_row(ctx, item.delivery_id).attempts == 1


def test_jpeg_baseline_result_reaches_orthanc_in_jpeg_baseline(
    ctx: WorkerContext, real_dicom_files: list[Path], tmp_path: Path
) -> None:
    """A compressed result can only be sent as it is: the SCU offers its own syntax alone, or a
    peer picking an uncompressed one would leave the C-STORE without a usable context."""
    require_tools()
    source = pydicom.dcmread(real_dicom_files[0])
    overlay = heatmap_overlay_for(synthetic_findings(source), transfer_syntax_uid=JPEGBaseline8Bit)
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        item = stored_result(
            ctx,
            real_dicom_files[0],
            host="127.0.0.1",
            port=orthanc.dicom_port,
            ae_title=orthanc.ae_title,
            result_ds=overlay,
        )

        outcome = deliver_result(item.delivery_id, ctx)

        assert (outcome.state, outcome.reason) == (DeliveryState.SENT, None)
        (instance,) = orthanc.get("/instances")
        syntax = orthanc.get_bytes(f"/instances/{instance}/metadata/TransferSyntax").decode()
        assert syntax == JPEGBaseline8Bit


def _stored_bytes_after_file_meta(ctx: WorkerContext, sop_instance_uid: str) -> bytes:
    with ctx.sessions() as session:
        result = session.scalars(
            select(Result).where(Result.sop_instance_uid == sop_instance_uid)
        ).one()
        data = ctx.store.read(result.relative_path)
    with BytesIO(data) as handle:
        pydicom.filereader.read_preamble(handle, force=False)
        pydicom.filereader._read_file_meta_info(handle)
        return data[handle.tell() :]


def test_result_in_its_own_syntax_goes_as_stored_without_decoding(
    ctx: WorkerContext, real_dicom_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that takes the file's own transfer syntax gets the stored bytes as they are: the SCU
    streams the file and never decodes it (re-encoding a 14-finding SR costs ~65 ms)."""
    source = copy_with_new_uids(real_dicom_files[0])
    source.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with storage_scp(STATUS_SUCCESS, syntaxes=[ExplicitVRLittleEndian]) as scp:
        item = stored_result(
            ctx,
            real_dicom_files[0],
            host="127.0.0.1",
            port=scp.port,
            ae_title=scp.ae_title,
            result_ds=source,
        )

        def no_decoding(*args: object, **kwargs: object) -> None:
            raise AssertionError("the stored result was decoded to send it")

        monkeypatch.setattr("dicom_node.scu.dcmread", no_decoding)
        outcome = deliver_result(item.delivery_id, ctx)

    assert (outcome.state, outcome.reason) == (DeliveryState.SENT, None)
    assert scp.received == [item.sop_instance_uid]
    assert scp.received_bytes == [_stored_bytes_after_file_meta(ctx, item.sop_instance_uid)]


def test_result_goes_re_encoded_to_a_peer_that_takes_another_uncompressed_syntax(
    ctx: WorkerContext, real_dicom_files: list[Path]
) -> None:
    """An Explicit VR file to a peer that accepts only Implicit VR: pynetdicom re-encodes it, and
    the peer gets the same data set in the syntax it took."""
    source = copy_with_new_uids(real_dicom_files[0])
    source.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with storage_scp(STATUS_SUCCESS, syntaxes=[ImplicitVRLittleEndian]) as scp:
        item = stored_result(
            ctx,
            real_dicom_files[0],
            host="127.0.0.1",
            port=scp.port,
            ae_title=scp.ae_title,
            result_ds=source,
        )
        outcome = deliver_result(item.delivery_id, ctx)

    assert (outcome.state, outcome.reason) == (DeliveryState.SENT, None)
    (received,) = scp.received_bytes
    assert received != _stored_bytes_after_file_meta(ctx, item.sop_instance_uid)
    decoded = pydicom.dcmread(BytesIO(received), force=True)  # no file meta: implicit VR read
    assert str(decoded.SOPInstanceUID) == item.sop_instance_uid
    assert decoded.PixelData == source.PixelData


def test_sent_delivery_is_not_sent_again(ctx: WorkerContext, real_dicom_files: list[Path]) -> None:
    with storage_scp(STATUS_SUCCESS) as scp:
        item = stored_result(
            ctx, real_dicom_files[0], host="127.0.0.1", port=scp.port, ae_title=scp.ae_title
        )
        assert deliver_result(item.delivery_id, ctx).state is DeliveryState.SENT
        again = deliver_result(item.delivery_id, ctx)
    assert (again.state, again.reason) == (DeliveryState.SENT, "not claimable")
    assert scp.received == [item.sop_instance_uid]  # exactly one C-STORE reached the peer
    assert delivery_row(ctx, item.delivery_id).attempts == 1


def test_closed_port_is_retried_with_backoff_then_given_up(
    ctx: WorkerContext, real_dicom_files: list[Path]
) -> None:
    item = stored_result(
        ctx, real_dicom_files[0], host="127.0.0.1", port=free_port(), ae_title="NOBODY"
    )
    for attempt in range(1, MAX_ATTEMPTS):
        outcome = deliver_result(item.delivery_id, ctx)
        assert outcome.state is DeliveryState.RETRYING
        assert outcome.retry_in_s == BACKOFF_S * 2 ** (attempt - 1)
        row = delivery_row(ctx, item.delivery_id)
        assert (row.state, row.attempts, row.last_status) == (
            DeliveryState.RETRYING,
            attempt,
            None,
        )
        assert row.reason is not None
        assert row.reason.startswith(f"attempt {attempt}/{MAX_ATTEMPTS}: ")
        assert "NOBODY" in row.reason

    outcome = deliver_result(item.delivery_id, ctx)

    assert outcome.state is DeliveryState.FAILED
    assert outcome.retry_in_s is None
    row = delivery_row(ctx, item.delivery_id)
    assert (row.state, row.attempts) == (DeliveryState.FAILED, MAX_ATTEMPTS)
    assert row.reason is not None
    assert row.reason.startswith(f"gave up after {MAX_ATTEMPTS} attempts: ")
    # Failed for good: another message does not try again.
    assert deliver_result(item.delivery_id, ctx).state is DeliveryState.FAILED
    assert delivery_row(ctx, item.delivery_id).attempts == MAX_ATTEMPTS


def test_refusal_a900_fails_at_once(ctx: WorkerContext, real_dicom_files: list[Path]) -> None:
    with storage_scp(STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS) as scp:
        item = stored_result(
            ctx, real_dicom_files[0], host="127.0.0.1", port=scp.port, ae_title=scp.ae_title
        )
        outcome = deliver_result(item.delivery_id, ctx)
        assert scp.received == [item.sop_instance_uid]
        assert deliver_result(item.delivery_id, ctx).state is DeliveryState.FAILED
        assert scp.received == [item.sop_instance_uid]  # not sent again

    assert outcome.state is DeliveryState.FAILED
    assert outcome.retry_in_s is None
    row = delivery_row(ctx, item.delivery_id)
    assert (row.state, row.attempts, row.last_status) == (DeliveryState.FAILED, 1, 0xA900)
    assert row.reason is not None
    assert "0xA900" in row.reason
    assert "gave up" not in row.reason


@pytest.mark.parametrize(
    "status", [STATUS_OUT_OF_RESOURCES, STATUS_PROCESSING_FAILURE], ids=["0xA700", "0x0110"]
)
def test_out_of_resources_or_processing_failure_is_retried(
    ctx: WorkerContext, real_dicom_files: list[Path], status: int
) -> None:
    with storage_scp(status) as scp:
        item = stored_result(
            ctx, real_dicom_files[0], host="127.0.0.1", port=scp.port, ae_title=scp.ae_title
        )
        outcome = deliver_result(item.delivery_id, ctx)
    assert scp.received == [item.sop_instance_uid]
    assert outcome.state is DeliveryState.RETRYING
    assert outcome.retry_in_s == BACKOFF_S
    row = delivery_row(ctx, item.delivery_id)
    assert (row.state, row.attempts, row.last_status) == (DeliveryState.RETRYING, 1, status)
    assert row.reason is not None
    assert f"0x{status:04X}" in row.reason


def test_permanent_association_rejection_fails_at_once(
    ctx: WorkerContext, real_dicom_files: list[Path]
) -> None:
    """A peer that does not know the called AE title rejects permanently: no point retrying."""
    with storage_scp(STATUS_SUCCESS, ae_title="PEER", require_called_aet=True) as scp:
        item = stored_result(
            ctx, real_dicom_files[0], host="127.0.0.1", port=scp.port, ae_title="WRONGAE"
        )
        outcome = deliver_result(item.delivery_id, ctx)
    assert scp.received == []
    assert outcome.state is DeliveryState.FAILED
    row = delivery_row(ctx, item.delivery_id)
    assert (row.state, row.attempts) == (DeliveryState.FAILED, 1)
    assert row.reason is not None
    assert "association rejected by WRONGAE" in row.reason


def test_transient_association_rejection_is_retried(
    ctx: WorkerContext, real_dicom_files: list[Path]
) -> None:
    """A peer at its association limit rejects transiently (local limit exceeded): retry later."""
    with storage_scp(STATUS_SUCCESS, maximum_associations=1) as scp:
        item = stored_result(
            ctx, real_dicom_files[0], host="127.0.0.1", port=scp.port, ae_title=scp.ae_title
        )
        holder = AE(ae_title="HOLDER")
        holder.add_requested_context(Verification)
        held = holder.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
        assert held.is_established
        try:
            outcome = deliver_result(item.delivery_id, ctx)
        finally:
            held.release()
        assert scp.received == []
        assert outcome.state is DeliveryState.RETRYING
        assert outcome.retry_in_s == BACKOFF_S
        row = delivery_row(ctx, item.delivery_id)
        assert row.reason is not None
        assert "association rejected by PEER" in row.reason

        # Once the peer has room again, the retry goes through.
        wait_for(lambda: not scp.ae.active_associations, timeout=20, what="the peer to free up")
        assert deliver_result(item.delivery_id, ctx).state is DeliveryState.SENT
    assert scp.received == [item.sop_instance_uid]
    row = delivery_row(ctx, item.delivery_id)
    assert (row.state, row.attempts) == (DeliveryState.SENT, 2)


def test_missing_result_file_is_retried_not_lost(
    ctx: WorkerContext, real_dicom_files: list[Path]
) -> None:
    with storage_scp(STATUS_SUCCESS) as scp:
        item = stored_result(
            ctx, real_dicom_files[0], host="127.0.0.1", port=scp.port, ae_title=scp.ae_title
        )
        with ctx.sessions() as session:
            relative = session.scalars(
                select(Result.relative_path).where(Result.sop_instance_uid == item.sop_instance_uid)
            ).one()
        ctx.store.absolute(relative).unlink()
        outcome = deliver_result(item.delivery_id, ctx)
    assert scp.received == []
    assert outcome.state is DeliveryState.RETRYING
    row = delivery_row(ctx, item.delivery_id)
    assert row.reason is not None
    assert "cannot read or send the result" in row.reason
