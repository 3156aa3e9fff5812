"""A job's images travel to the PACS while the job builds the rest (``workers.delivery.JobDelivery``),
on real parts: the real NIH image received as the node does, the tiny ONNX classifier, a real
pynetdicom storage SCP as the PACS (SQLite and PostgreSQL).

What is held here: the images reach the PACS before the job's report is built, and the report
last; one association carries the job; a destination that cannot be reached is knocked on once
per job, not once per result; a job that fails half-way still sends or queues what it recorded,
and leaves no thread behind.
"""

import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.models import DeliveryState, JobState, Result, ResultKind
from models.export import BuiltModel
from radlight.contracts import QUEUE_DELIVERY
from tests.brokers import folder_messages
from tests.workers.test_stages import counting_pacs, deliveries, job_for
from workers import analysis, pipeline
from workers.analysis import BuiltResult
from workers.context import WorkerContext
from workers.pipeline import run_job

pytestmark = pytest.mark.integration


def recorded_kinds(ctx: WorkerContext, job_id: int) -> list[ResultKind]:
    with ctx.sessions() as session:
        return list(session.scalars(select(Result.kind).where(Result.job_id == job_id)))


def test_images_reach_the_pacs_before_the_report_is_built(
    inline_ctx: WorkerContext,
    tiny_model: BuiltModel,
    real_dicom_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = inline_ctx
    with counting_pacs() as pacs:
        job_id = job_for(ctx, real_dicom_files[0], tiny_model, pacs.port, "PACS")
        seen_before_report: list[int] = []
        build_report = analysis.build_report_result

        def report_after_the_pacs_has_an_image(*args: Any, **kwargs: Any) -> BuiltResult:
            # Sent one after the other, nothing would reach the PACS before this returns.
            for _ in range(2000):
                if pacs.received:
                    break
                threading.Event().wait(0.01)
            seen_before_report.append(len(pacs.received))
            return build_report(*args, **kwargs)

        monkeypatch.setattr(pipeline, "build_report_result", report_after_the_pacs_has_an_image)
        assert run_job(job_id, ctx) is JobState.SUCCEEDED

        assert len(seen_before_report) == 1
        assert seen_before_report[0] >= 1
        sent = deliveries(ctx, job_id)
        assert {(d.state, d.attempts) for d in sent} == {(DeliveryState.SENT, 1)}
        with ctx.sessions() as session:
            report_uid = session.scalars(
                select(Result.sop_instance_uid).where(
                    Result.job_id == job_id, Result.kind == ResultKind.FINDINGS_SR
                )
            ).one()
        assert len(pacs.received) == len(sent) >= 3  # summary SC, heatmap SC(s), the report
        assert pacs.received[-1] == report_uid  # the report goes last, after the job succeeded
        assert (ctx.sender.opened, pacs.associations) == (1, 1)


class RefusingPeer:
    """A TCP listener that accepts and at once closes every connection, counting them: a PACS
    whose DICOM service is down behind a live port."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.server.close()


def test_a_destination_that_is_down_is_tried_once_per_job(
    inline_ctx: WorkerContext, tiny_model: BuiltModel, real_dicom_files: list[Path]
) -> None:
    ctx = inline_ctx
    peer = RefusingPeer()
    try:
        job_id = job_for(ctx, real_dicom_files[0], tiny_model, peer.port, "DOWN")
        assert run_job(job_id, ctx) is JobState.SUCCEEDED
    finally:
        peer.close()

    waiting = deliveries(ctx, job_id)
    assert len(waiting) >= 3
    assert {(d.state, d.attempts) for d in waiting} == {(DeliveryState.RETRYING, 1)}
    assert peer.connections == 1  # the first result's; the others wait for their retry
    queued = folder_messages(ctx.settings.queue_dir, QUEUE_DELIVERY)
    assert sorted(m.kwargs["delivery_id"] for m in queued) == [d.id for d in waiting]


def test_a_job_failing_after_its_images_still_delivers_them_and_leaves_no_thread(
    inline_ctx: WorkerContext,
    tiny_model: BuiltModel,
    real_dicom_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = inline_ctx

    def broken_report(*args: Sequence[object], **kwargs: object) -> BuiltResult:
        raise RuntimeError("report builder bug")

    monkeypatch.setattr(pipeline, "build_report_result", broken_report)
    with counting_pacs() as pacs:
        job_id = job_for(ctx, real_dicom_files[0], tiny_model, pacs.port, "PACS")
        with pytest.raises(RuntimeError, match="report builder bug"):
            run_job(job_id, ctx)

        # What was recorded (the images) went out before run_job raised; no report exists.
        assert ResultKind.FINDINGS_SR not in recorded_kinds(ctx, job_id)
        sent = deliveries(ctx, job_id)
        assert len(sent) >= 2
        assert {d.state for d in sent} == {DeliveryState.SENT}
        assert sorted(pacs.received) == sorted(d.result.sop_instance_uid for d in sent)
    assert not [t for t in threading.enumerate() if t.name == "job-delivery"]
