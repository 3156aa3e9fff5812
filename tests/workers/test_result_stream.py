"""Each result stored and sent while the next is built (workers/result_stream.py), on real parts:
the real NIH image received as the node does, the tiny ONNX classifier, real pynetdicom storage
SCPs as destinations (SQLite and PostgreSQL).

What streaming changes, and what it must not: a result now reaches the PACS before the next one
is built and before its row exists, so a job that fails after sending is run again with the same
objects (deterministic UIDs) and loses or doubles nothing; each destination still gets only the
Secondary Captures in its encoding; one destination's failures are its own.
"""

import operator
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from db.config import upsert_destination
from db.jobs import finish_job, release_for_retry
from db.models import Delivery, DeliveryState, JobState, Result, SCEncoding
from db.session import transaction
from models.export import BuiltModel
from radlight.contracts import QUEUE_DELIVERY
from tests.brokers import folder_messages
from tests.peers import free_port, wait_for
from tests.workers.conftest import receive
from tests.workers.test_pipeline import get_job, make_job, sop_uid
from tests.workers.test_stages import counting_pacs, deliveries, inline_ctx, job_for
from workers.analysis import BuiltResult, iter_results
from workers.context import WorkerContext
from workers.pipeline import run_job

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Sent:
    """A delivery as the test reads it back, with its result."""

    delivery_id: int
    sop_instance_uid: str
    sop_class_uid: str
    sc_encoding: SCEncoding | None
    relative_path: str
    state: DeliveryState
    attempts: int
    last_status: int | None
    reason: str | None


__all__ = ["inline_ctx"]  # the fixture, used by name

DIMSE_SOP_CLASS_NOT_SUPPORTED = 0x0122  # a permanent refusal (PS3.7 C.4.2.1.4)
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def test_each_result_reaches_the_pacs_before_the_next_is_built(
    inline_ctx: WorkerContext,
    tiny_model: BuiltModel,
    real_dicom_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The builder waits, after handing over each result, until the PACS has it: with every
    result sent only after the last was built (as before streaming), this would time out."""
    ctx = inline_ctx
    real_results = iter_results
    arrived: list[str] = []
    with counting_pacs() as pacs:

        def one_at_a_time(*args: Any, **kwargs: Any) -> Iterator[BuiltResult]:
            for item in real_results(*args, **kwargs):
                yield item  # the pipeline stores and queues it for sending, then asks for more
                uid = str(item.dataset.SOPInstanceUID)
                wait_for(partial(operator.contains, pacs.received, uid), timeout=20, what=uid)
                arrived.append(uid)

        monkeypatch.setattr("workers.pipeline.iter_results", one_at_a_time)
        job_id = job_for(ctx, real_dicom_files[0], tiny_model, pacs.port, "PACS")
        assert run_job(job_id, ctx) is JobState.SUCCEEDED

    sent = deliveries(ctx, job_id)
    assert len(arrived) == len(sent) >= 2  # every result, the SR last
    assert pacs.received == arrived
    assert {(d.state, d.attempts, d.last_status) for d in sent} == {(DeliveryState.SENT, 1, 0)}
    assert pacs.associations == 1


def test_a_job_whose_recording_fails_after_sending_is_rerun_with_the_same_objects(
    inline_ctx: WorkerContext,
    tiny_model: BuiltModel,
    real_dicom_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database fails once the first result has reached the PACS: nothing is recorded, the
    sends not yet started are dropped, no temp file is left, and the job's re-run (as the task's
    retry does it) sends every object, the first ones again over the same UIDs, and records each
    once, SENT."""
    ctx = inline_ctx
    real_finish = finish_job
    failures = iter([OperationalError("UPDATE job", {}, Exception("server closed the connection"))])

    with counting_pacs() as pacs:

        def finish_once_failing(**kwargs: Any) -> None:
            error = next(failures, None)
            if error is not None:
                wait_for(lambda: pacs.received, timeout=20, what="a result in the PACS")
                raise error
            real_finish(**kwargs)

        monkeypatch.setattr("workers.pipeline.finish_job", finish_once_failing)
        job_id = job_for(ctx, real_dicom_files[0], tiny_model, pacs.port, "PACS")
        with pytest.raises(OperationalError):
            run_job(job_id, ctx)
        first_run = list(pacs.received)
        with ctx.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Result)) == 0
        assert list(ctx.store.root.rglob(".incoming-*")) == []
        with transaction(ctx.sessions) as session:
            release_for_retry(session=session, job_id=job_id, reason="database hiccup")

        assert run_job(job_id, ctx) is JobState.SUCCEEDED
        rerun = pacs.received[len(first_run) :]

    assert first_run  # sent while built, before any row existed
    assert rerun[: len(first_run)] == first_run  # the same objects, in the same order
    sent = deliveries(ctx, job_id)
    assert sorted(d.result.sop_instance_uid for d in sent) == sorted(rerun)
    assert {(d.state, d.attempts) for d in sent} == {(DeliveryState.SENT, 1)}
    assert get_job(ctx, job_id).state is JobState.SUCCEEDED


def test_each_destination_gets_its_encoding_and_keeps_its_own_failures(
    inline_ctx: WorkerContext, tiny_model: BuiltModel, real_dicom_files: list[Path]
) -> None:
    """Three destinations on one route: a lossless one that refuses SRs for good, a JPEG one,
    and one that is down. Each gets only its Secondary Captures; the refusal is FAILED with the
    status, the down one's deliveries wait on the delivery queue, the rest are SENT."""
    ctx = inline_ctx

    def no_reports(dataset: pydicom.Dataset) -> int:
        return DIMSE_SOP_CLASS_NOT_SUPPORTED if dataset.SOPClassUID == COMPREHENSIVE_SR else 0

    with counting_pacs(no_reports) as lossless, counting_pacs() as jpeg:
        with transaction(ctx.sessions) as session:
            for name, port, encoding in (
                ("LOSSLESS", lossless.port, SCEncoding.LOSSLESS),
                ("JPEG", jpeg.port, SCEncoding.JPEG_BASELINE),
                ("DOWN", free_port(), SCEncoding.LOSSLESS),
            ):
                upsert_destination(
                    session=session,
                    name=name,
                    host="127.0.0.1",
                    port=port,
                    ae_title=name,
                    sc_encoding=encoding,
                )
        source = real_dicom_files[0]
        outcome = receive(ctx, source)
        job_id = make_job(
            ctx,
            outcome.study_id,
            [sop_uid(source)],
            model_name=tiny_model.card.name,
            destinations=("LOSSLESS", "JPEG", "DOWN"),
        )
        assert run_job(job_id, ctx) is JobState.SUCCEEDED

    by_destination: dict[str, list[Sent]] = {}
    with ctx.sessions() as session:
        for delivery in session.scalars(select(Delivery).order_by(Delivery.id)):
            by_destination.setdefault(delivery.destination.name, []).append(
                Sent(
                    delivery.id,
                    delivery.result.sop_instance_uid,
                    delivery.result.sop_class_uid,
                    delivery.result.sc_encoding,
                    delivery.result.relative_path,
                    delivery.state,
                    delivery.attempts,
                    delivery.last_status,
                    delivery.reason,
                )
            )

    assert {d.sc_encoding for d in by_destination["LOSSLESS"]} == {SCEncoding.LOSSLESS, None}
    assert {d.sc_encoding for d in by_destination["JPEG"]} == {SCEncoding.JPEG_BASELINE, None}
    jpeg_scs = [
        pydicom.dcmread(ctx.store.absolute(d.relative_path))
        for d in by_destination["JPEG"]
        if d.sc_encoding
    ]
    assert jpeg_scs
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in jpeg_scs} == {JPEGBaseline8Bit}
    assert sorted(jpeg.received) == sorted(d.sop_instance_uid for d in by_destination["JPEG"])
    assert sorted(lossless.received) == sorted(
        d.sop_instance_uid for d in by_destination["LOSSLESS"]
    )

    for sent in by_destination["LOSSLESS"]:
        if sent.sop_class_uid == COMPREHENSIVE_SR:
            assert (sent.state, sent.last_status) == (DeliveryState.FAILED, 0x0122)
            assert "0x0122" in (sent.reason or "")
        else:
            assert (sent.state, sent.last_status) == (DeliveryState.SENT, 0)
    assert {(d.state, d.last_status) for d in by_destination["JPEG"]} == {(DeliveryState.SENT, 0)}
    down = by_destination["DOWN"]
    assert {(d.state, d.attempts) for d in down} == {(DeliveryState.RETRYING, 1)}
    queued = folder_messages(ctx.settings.queue_dir, QUEUE_DELIVERY)
    assert sorted(m.kwargs["delivery_id"] for m in queued) == sorted(d.delivery_id for d in down)
