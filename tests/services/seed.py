"""What the operations API tests share: studies with a job, a result and a delivery recorded through
the real repository functions, the role gate check, and reading the audit trail back."""

from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.config import upsert_destination, upsert_route
from db.deliveries import ensure_deliveries, mark_delivery
from db.ingest import ReceivedInstance, record_instance
from db.jobs import create_job_if_new, finish_job
from db.models import (
    AuditEvent,
    DeliveryState,
    Destination,
    JobState,
    Result,
    ResultKind,
    Role,
    Route,
)
from db.session import transaction

ROOT = "1.2.826.0.1.3680043.8.498"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True)
class Seeded:
    """One study with one job, one result of that job and its delivery to one destination."""

    study_uid: str
    study_id: int
    job_id: int
    result_id: int
    delivery_id: int
    destination_id: int
    route_id: int


def received(n: int, *, modality: str = "DX", calling_ae: str = "PACS") -> ReceivedInstance:
    return ReceivedInstance(
        study_instance_uid=f"{ROOT}.{n}",
        series_instance_uid=f"{ROOT}.{n}.1",
        sop_instance_uid=f"{ROOT}.{n}.1.1",
        sop_class_uid=DX_FOR_PRESENTATION,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        body_part_examined="CHEST",
        view_position="PA",
        relative_path=f"instances/{n}.dcm",
        size_bytes=1000 + n,
        sha256="0" * 64,
        calling_ae=calling_ae,
        called_ae="RADLIGHT",
    )


def _destination(session: Session, name: str) -> Destination:
    found = session.scalars(select(Destination).where(Destination.name == name)).one_or_none()
    return found or upsert_destination(
        session=session, name=name, host="127.0.0.1", port=1, ae_title=name.upper()
    )


def _route(session: Session) -> Route:
    found = session.scalars(select(Route).where(Route.name == "chest")).one_or_none()
    return found or upsert_route(
        session=session, name="chest", model_name="tiny-test-classifier", destination_names=["pacs"]
    )


def seed(
    sessions: sessionmaker[Session],
    n: int = 1,
    *,
    job_state: JobState = JobState.FAILED,
    delivery_state: DeliveryState = DeliveryState.FAILED,
    modality: str = "DX",
    relative_path: str | None = None,
    destination: str = "pacs",
) -> Seeded:
    """Study ``n`` (UIDs under ``ROOT.n``) with a job in ``job_state`` that produced one result,
    whose delivery to ``destination`` is in ``delivery_state``."""
    instance = received(n, modality=modality)
    with transaction(sessions) as session:
        outcome = record_instance(instance, session=session)
        _destination(session, "pacs")
        route = _route(session)
        target = _destination(session, destination)
        job = create_job_if_new(
            session=session,
            study_id=outcome.study_id,
            route=route,
            sop_instance_uids=[instance.sop_instance_uid],
        )
        assert job is not None
        if job_state in (JobState.SUCCEEDED, JobState.NOT_ANALYSED, JobState.FAILED):
            finish_job(
                session=session,
                job_id=job.id,
                state=job_state,
                reason="model failed: test" if job_state is JobState.FAILED else None,
                model_version="0.0.0-seed0",
            )
        else:
            job.state = job_state
        result = Result(
            job_id=job.id,
            kind=ResultKind.HEATMAP_SC,
            sop_instance_uid=f"{ROOT}.{n}.9.1",
            sop_class_uid=SECONDARY_CAPTURE,
            series_instance_uid=f"{ROOT}.{n}.9",
            source_sop_instance_uid=instance.sop_instance_uid,
            relative_path=relative_path or f"results/{n}.dcm",
            model_name="tiny-test-classifier",
            model_version="0.0.0-seed0",
            summary={"present": ["Effusion"]},
        )
        session.add(result)
        session.flush()
        (delivery,) = ensure_deliveries(session=session, result=result, destinations=[target])
        if delivery_state is not DeliveryState.PENDING:
            mark_delivery(
                session=session,
                delivery_id=delivery.id,
                state=delivery_state,
                status=0xA700 if delivery_state is DeliveryState.FAILED else 0,
                reason="peer out of resources" if delivery_state is DeliveryState.FAILED else None,
            )
        return Seeded(
            study_uid=instance.study_instance_uid,
            study_id=outcome.study_id,
            job_id=job.id,
            result_id=result.id,
            delivery_id=delivery.id,
            destination_id=target.id,
            route_id=route.id,
        )


def audit_events(sessions: sessionmaker[Session], action: str) -> list[AuditEvent]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
        )


def assert_role_gate(
    client: TestClient,
    role_headers: dict[Role, dict[str, str]],
    method: str,
    path: str,
    needs: Role,
    **kwargs: Any,
) -> None:
    """Anonymous callers get 401 and every role below ``needs`` 403 with a message; nothing moves."""
    anonymous = client.request(method, path, **kwargs)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.json()["detail"] == "not authenticated"
    for role in Role:
        if not role.includes(needs):
            refused = client.request(method, path, headers=role_headers[role], **kwargs)
            assert refused.status_code == 403, (role, refused.text)
            assert f"needs the {needs.value} role" in refused.json()["detail"]


def assert_refused(
    client: TestClient,
    headers: dict[str, str],
    method: str,
    path: str,
    status: int,
    detail: str | None = None,
) -> None:
    """``method path`` gets ``status`` with a message (exactly ``detail`` when given)."""
    response = client.request(method, path, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    if detail is not None:
        assert response.json()["detail"] == detail


def assert_read_by(
    client: TestClient, role_headers: dict[Role, dict[str, str]], least: Role, *paths: str
) -> None:
    """Each GET ``path``: 401 anonymous, 403 below ``least``, 200 for ``least`` and above."""
    for path in paths:
        assert_role_gate(client, role_headers, "GET", path, least)
        for role in Role:
            if role.includes(least):
                response = client.get(path, headers=role_headers[role])
                assert response.status_code == 200, (role, path, response.text)
