"""Per-stage timings and the inline delivery, on real parts: the real NIH image received as the
node does, the tiny ONNX classifier, a real pynetdicom storage SCP as the destination that counts
the associations it is asked for (SQLite and PostgreSQL). Delivery to Orthanc itself is covered by
tests/workers/test_delivery.py and the end-to-end tests.

A job records the milliseconds it spent in every stage; the API shows them on the job and in the
study's timings. Its results go to the PACS from the job's worker over one kept-open association
per destination; a destination that cannot be reached leaves them RETRYING on the delivery queue.
"""

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context, evt
from pynetdicom.events import Event
from sqlalchemy import select

from db.config import upsert_destination
from db.models import Delivery, DeliveryState, JobState, Role, User
from db.session import transaction
from models.export import BuiltModel
from radlight.contracts import QUEUE_DELIVERY
from radlight.stages import STAGES
from services.app import create_app
from services.security import hash_password, issue_token, load_secret_key
from tests.brokers import folder_messages
from tests.page_cache import cached_pages
from tests.peers import free_port
from tests.workers.conftest import copy_with_new_uids, receive, worker_context
from tests.workers.test_pipeline import get_job, make_job, sop_uid
from workers.context import WorkerContext
from workers.pipeline import run_job

pytestmark = pytest.mark.integration


@pytest.fixture
def inline_ctx(
    tmp_path: Path, database_url: str, tiny_model: BuiltModel
) -> Iterator[WorkerContext]:
    """A worker context that sends results itself (the default outside these tests)."""
    with worker_context(tmp_path, database_url, tiny_model, delivery_inline=True) as context:
        yield context


def deliveries(ctx: WorkerContext, job_id: int) -> list[Delivery]:
    with ctx.sessions() as session:
        rows = session.scalars(select(Delivery).order_by(Delivery.id))
        return [d for d in rows if d.result.job_id == job_id]


def api_client(ctx: WorkerContext) -> tuple[TestClient, dict[str, str]]:
    settings = ctx.settings
    with transaction(ctx.sessions) as session:
        session.add(
            User(username="viewer", password_hash=hash_password("x" * 12), role=Role.VIEWER)
        )
    token = issue_token("viewer", load_secret_key(settings), timedelta(minutes=5)).access_token
    return TestClient(create_app(settings)), {"Authorization": f"Bearer {token}"}


@dataclass
class Pacs:
    port: int
    associations: int = 0
    received: list[str] = field(default_factory=list)


@contextlib.contextmanager
def counting_pacs(status_of: Callable[[pydicom.Dataset], int] | None = None) -> Iterator[Pacs]:
    """A real pynetdicom storage SCP (every storage SOP class, in every transfer syntax) that
    counts associations and answers each C-STORE with ``status_of(dataset)`` (Success)."""
    ae = AE(ae_title="PACS")
    ae.supported_contexts = [
        build_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts
    ]
    pacs = Pacs(free_port())
    lock = threading.Lock()

    def established(event: Event) -> None:
        with lock:
            pacs.associations += 1

    def store(event: Event) -> int:
        with lock:
            pacs.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000 if status_of is None else status_of(event.dataset)

    handlers: list[Any] = [(evt.EVT_ESTABLISHED, established), (evt.EVT_C_STORE, store)]
    server = ae.start_server(("127.0.0.1", pacs.port), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        yield pacs
    finally:
        server.shutdown()


def job_for(
    ctx: WorkerContext, source: Path | pydicom.Dataset, model: BuiltModel, port: int, ae: str
) -> int:
    """``source`` received as the node does, and a queued job sending to ``ae`` at ``port``."""
    with transaction(ctx.sessions) as session:
        upsert_destination(session=session, name=ae, host="127.0.0.1", port=port, ae_title=ae)
    outcome = receive(ctx, source)
    return make_job(
        ctx, outcome.study_id, [sop_uid(source)], model_name=model.card.name, destinations=(ae,)
    )


def test_every_stage_is_recorded_and_results_go_over_one_kept_association(
    inline_ctx: WorkerContext, tiny_model: BuiltModel, real_dicom_files: list[Path]
) -> None:
    ctx = inline_ctx
    with counting_pacs() as pacs:
        job_id = job_for(ctx, real_dicom_files[0], tiny_model, pacs.port, "PACS")
        assert run_job(job_id, ctx) is JobState.SUCCEEDED

        sent = deliveries(ctx, job_id)
        assert len(sent) >= 2  # at least the summary SC and the SR
        assert {(d.state, d.attempts, d.last_status) for d in sent} == {(DeliveryState.SENT, 1, 0)}
        with ctx.sessions() as session:
            sent_uids = {d.result.sop_instance_uid for d in session.scalars(select(Delivery))}
        assert sorted(pacs.received) == sorted(sent_uids)
        assert folder_messages(ctx.settings.queue_dir, QUEUE_DELIVERY) == []
        assert (ctx.sender.opened, pacs.associations) == (1, 1)  # the job's results, together
        with ctx.sessions() as session:
            files = [
                ctx.store.absolute(d.result.relative_path)
                for d in session.scalars(select(Delivery))
            ]
        # Sent results are written once and read once: the worker lets the kernel drop them.
        assert [cached_pages(f) for f in files] == [0] * len(files)

        job = get_job(ctx, job_id)
        assert job.stage_ms is not None
        assert list(job.stage_ms) == list(STAGES)  # all nine, in pipeline order
        assert all(isinstance(v, float) and v >= 0 for v in job.stage_ms.values())
        for measured in ("decode", "preprocess", "inference", "cam", "build", "deliver"):
            assert job.stage_ms[measured] > 0, measured
        assert job.stage_ms["receive"] == 0  # one instance: nothing between first and last

        # A second study's job reuses the association that is still open.
        second = copy_with_new_uids(real_dicom_files[1])
        second_job = job_for(ctx, second, tiny_model, pacs.port, "PACS")
        assert run_job(second_job, ctx) is JobState.SUCCEEDED
        assert (ctx.sender.opened, pacs.associations) == (1, 1)
        assert len(pacs.received) == len(sent) + len(deliveries(ctx, second_job))

    client, headers = api_client(ctx)
    with client:
        body = client.get(f"/api/v1/jobs/{job_id}", headers=headers)
        assert body.status_code == 200, body.text
        assert body.json()["stage_ms"] == job.stage_ms
        detail = client.get(
            f"/api/v1/studies/{sop_study_uid(real_dicom_files[0])}", headers=headers
        )
        assert detail.status_code == 200, detail.text
        (timing,) = detail.json()["timings"]["jobs"]
        assert timing["stage_ms"] == job.stage_ms
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "queue_wait" in schema["JobOut"]["properties"]["stage_ms"]["description"]


def sop_study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_unreachable_destination_leaves_results_retrying_on_the_delivery_queue(
    inline_ctx: WorkerContext, tiny_model: BuiltModel, real_dicom_files: list[Path]
) -> None:
    ctx = inline_ctx
    job_id = job_for(ctx, real_dicom_files[0], tiny_model, free_port(), "DOWN")

    assert run_job(job_id, ctx) is JobState.SUCCEEDED  # the results exist; sending is apart

    waiting = deliveries(ctx, job_id)
    assert {(d.state, d.attempts) for d in waiting} == {(DeliveryState.RETRYING, 1)}
    assert all("no association with DOWN" in (d.reason or "") for d in waiting)
    messages = folder_messages(ctx.settings.queue_dir, QUEUE_DELIVERY)
    assert sorted(m.kwargs["delivery_id"] for m in messages) == [d.id for d in waiting]
    etas = [
        json.loads(path.read_bytes())["headers"]["eta"]
        for path in (ctx.settings.queue_dir / "messages").glob(f"*.{QUEUE_DELIVERY}.msg")
    ]
    assert len(etas) == len(waiting)
    assert all(etas)  # each after its back-off
    assert ctx.sender.opened == 0
    stage_ms = get_job(ctx, job_id).stage_ms
    assert stage_ms is not None
    assert "deliver" in stage_ms
