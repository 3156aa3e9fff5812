"""Destinations over real databases: CRUD, roles, audit, hostile input, and a real C-ECHO to a
real Orthanc (and to a port nobody listens on)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.config import upsert_destination, upsert_route
from db.ingest import record_instance
from db.jobs import create_job_if_new
from db.models import AuditEvent, Delivery, Destination, Result, ResultKind, Role, Route
from db.session import transaction
from tests.peers import Orthanc, free_port, require_tools, run_orthanc
from tests.services.roles import assert_roles
from tests.services.test_api import RECEIVED

DESTINATIONS = "/api/v1/destinations"
BODY = {"name": "pacs-a", "host": "127.0.0.1", "port": 104, "ae_title": "PACS_A"}
NO_TLS = {"tls_enabled": False, "tls_ca_file": None, "tls_cert_file": None, "tls_key_file": None}


def audit_events(sessions: sessionmaker[Session], prefix: str) -> list[AuditEvent]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action.startswith(prefix))
                .order_by(AuditEvent.id)
            )
        )


@pytest.fixture
def destination_id(sessions: sessionmaker[Session]) -> int:
    with transaction(sessions) as session:
        return upsert_destination(
            session=session, name="existing", host="10.0.0.5", port=11112, ae_title="EXISTING"
        ).id


def test_admin_creates_reads_changes_and_deletes_a_destination(
    client: TestClient, sessions: sessionmaker[Session], admin: dict[str, str]
) -> None:
    created = client.post(DESTINATIONS, json={**BODY, "ae_title": "  PACS_A "}, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body == {
        **BODY,
        "id": body["id"],
        "enabled": True,
        "sc_encoding": "lossless",
        **NO_TLS,
        "routes": [],
    }
    url = f"{DESTINATIONS}/{body['id']}"
    assert client.get(url, headers=admin).json() == body
    assert [d["name"] for d in client.get(DESTINATIONS, headers=admin).json()] == ["pacs-a"]

    replaced = client.put(
        url,
        json={**BODY, "host": "pacs.example.org", "port": 4242, "sc_encoding": "jpeg_baseline"},
        headers=admin,
    )
    assert replaced.status_code == 200, replaced.text
    assert (replaced.json()["host"], replaced.json()["port"]) == ("pacs.example.org", 4242)

    patched = client.patch(url, json={"enabled": False}, headers=admin)
    assert patched.status_code == 200, patched.text
    assert patched.json() == {**replaced.json(), "enabled": False}
    with sessions() as session:
        row = session.get(Destination, body["id"])
        assert row is not None
        assert (row.host, row.port, row.enabled) == ("pacs.example.org", 4242, False)

    assert client.delete(url, headers=admin).status_code == 204
    assert client.get(url, headers=admin).status_code == 404

    events = audit_events(sessions, "destination.")
    assert [e.action for e in events] == [
        "destination.create",
        "destination.update",
        "destination.update",
        "destination.delete",
    ]
    assert {e.actor for e in events} == {"user:admin"}
    assert {e.target_id for e in events} == {str(body["id"])}
    assert events[0].detail["changes"]["ae_title"] == {"from": None, "to": "PACS_A"}
    assert events[2].detail["changes"] == {"enabled": {"from": True, "to": False}}
    assert events[3].detail["deleted"]["host"] == "pacs.example.org"


def test_every_endpoint_for_every_role(
    client: TestClient, role_headers: dict[Role, dict[str, str]], destination_id: int
) -> None:
    one = f"{DESTINATIONS}/{destination_id}"
    checks: list[tuple[str, str, Role, int, Any]] = [
        ("GET", DESTINATIONS, Role.OPERATOR, 200, None),
        ("GET", one, Role.OPERATOR, 200, None),
        ("POST", DESTINATIONS, Role.ADMIN, 201, BODY),
        ("PUT", one, Role.ADMIN, 200, {**BODY, "name": "renamed"}),
        ("PATCH", one, Role.ADMIN, 200, {"port": 4243}),
        ("POST", f"{one}/echo", Role.OPERATOR, 200, None),
        ("DELETE", one, Role.ADMIN, 204, None),
    ]
    for method, path, least, ok, json in checks:
        assert_roles(client, role_headers, method, path, least=least, ok=ok, json=json)


HOSTILE: list[tuple[dict[str, object], str]] = [
    ({"ae_title": ""}, "at least 1 character"),
    ({"ae_title": "    "}, "at least 1 character"),
    ({"ae_title": "A" * 17}, "at most 16 characters"),
    ({"ae_title": "BAD\\AE"}, "without backslash"),
    ({"ae_title": "TAB\tAE"}, "without backslash"),
    ({"ae_title": "ÄRZTE"}, "printable ASCII"),
    ({"port": 0}, "greater than or equal to 1"),
    ({"port": 65536}, "less than or equal to 65535"),
    ({"port": "many"}, "valid integer"),
    ({"host": ""}, "at least 1 character"),
    ({"host": "h" * 256}, "at most 255 characters"),
    ({"host": "pacs; rm -rf /"}, "should match pattern"),
    ({"sc_encoding": "gif"}, "lossless"),
    ({"name": ""}, "at least 1 character"),
    ({"name": "n" * 65}, "at most 64 characters"),
    ({"name": "<script>"}, "should match pattern"),
    ({"enabled": "perhaps"}, "valid boolean"),
    ({"colour": "blue"}, "Extra inputs are not permitted"),
]


def test_hostile_bodies_get_422_with_a_message(
    client: TestClient, admin: dict[str, str], destination_id: int
) -> None:
    """Every case through POST, PUT and PATCH (one database per backend for all of them)."""
    for change, fragment in HOSTILE:
        for method, path, body in (
            ("POST", DESTINATIONS, {**BODY, **change}),
            ("PUT", f"{DESTINATIONS}/{destination_id}", {**BODY, **change}),
            ("PATCH", f"{DESTINATIONS}/{destination_id}", change),
        ):
            response = client.request(method, path, json=body, headers=admin)
            assert response.status_code == 422, (change, method, response.text)
            assert fragment in response.text, (change, method, response.text)
    assert [d["name"] for d in client.get(DESTINATIONS, headers=admin).json()] == ["existing"]


BAD_IDS: list[tuple[str, str, int]] = [
    ("GET", "/0", 422),
    ("GET", "/-3", 422),
    ("GET", "/abc", 422),
    ("GET", "/99999999999999999999", 422),
    ("GET", "/4242", 404),
    ("PATCH", "/4242", 404),
    ("PUT", "/4242", 404),
    ("DELETE", "/4242", 404),
    ("POST", "/4242/echo", 404),
]


def test_bad_or_unknown_ids(client: TestClient, admin: dict[str, str]) -> None:
    for method, path, status in BAD_IDS:
        json = BODY if method in ("PUT", "PATCH") else None
        response = client.request(method, DESTINATIONS + path, json=json, headers=admin)
        assert response.status_code == status, (method, path, response.text)
        assert response.json()["detail"]


def test_names_are_unique(client: TestClient, admin: dict[str, str], destination_id: int) -> None:
    response = client.post(DESTINATIONS, json={**BODY, "name": "existing"}, headers=admin)
    assert response.status_code == 409
    assert "exists already" in response.json()["detail"]
    other = client.post(DESTINATIONS, json=BODY, headers=admin).json()
    renamed = client.patch(
        f"{DESTINATIONS}/{other['id']}", json={"name": "existing"}, headers=admin
    )
    assert renamed.status_code == 409
    # Renaming a destination to its own name is no conflict.
    same = client.put(
        f"{DESTINATIONS}/{destination_id}", json={**BODY, "name": "existing"}, headers=admin
    )
    assert same.status_code == 200, same.text


def test_a_destination_in_use_is_not_deleted_but_can_be_disabled(
    client: TestClient, sessions: sessionmaker[Session], admin: dict[str, str], destination_id: int
) -> None:
    with transaction(sessions) as session:
        upsert_route(session=session, name="chest", model_name="m", destination_names=["existing"])
    url = f"{DESTINATIONS}/{destination_id}"
    assert client.get(url, headers=admin).json()["routes"] == ["chest"]
    in_route = client.delete(url, headers=admin)
    assert in_route.status_code == 409
    assert "used by route(s) chest" in in_route.json()["detail"]

    with transaction(sessions) as session:
        route = session.scalars(select(Route)).one()
        route.destinations = []  # no longer routed there, but results were sent there before
        outcome = record_instance(RECEIVED, session=session)
        job = create_job_if_new(
            session=session, study_id=outcome.study_id, route=route, sop_instance_uids=["1.2.3"]
        )
        assert job is not None
        result = Result(
            job_id=job.id,
            kind=ResultKind.FINDINGS_SR,
            sop_instance_uid="1.2.3.4",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
            series_instance_uid="1.2.3.5",
            relative_path="results/x.dcm",
            model_name="m",
            model_version="1",
        )
        session.add(result)
        session.flush()
        session.add(Delivery(result_id=result.id, destination_id=destination_id))
    with_history = client.delete(url, headers=admin)
    assert with_history.status_code == 409
    assert "1 deliveries on record; disable it instead" in with_history.json()["detail"]

    assert client.patch(url, json={"enabled": False}, headers=admin).json()["enabled"] is False
    with sessions() as session:
        assert session.get(Destination, destination_id) is not None


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    require_tools()
    with run_orthanc(tmp_path / "orthanc", ae_title="ECHOPACS") as pacs:
        yield pacs


def test_echo_reaches_a_real_pacs_and_reports_an_unreachable_one(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    orthanc: Orthanc,
) -> None:
    admin, operator = role_headers[Role.ADMIN], role_headers[Role.OPERATOR]
    up = client.post(
        DESTINATIONS,
        json={**BODY, "port": orthanc.dicom_port, "ae_title": orthanc.ae_title},
        headers=admin,
    ).json()
    down = client.post(
        DESTINATIONS, json={**BODY, "name": "nobody", "port": free_port()}, headers=admin
    ).json()

    ok = client.post(f"{DESTINATIONS}/{up['id']}/echo", headers=operator)
    assert ok.status_code == 200, ok.text
    assert ok.json()["ok"] is True
    assert ok.json()["status"] == 0
    assert ok.json()["error"] is None
    assert ok.json()["calling_ae"] == "RADLIGHT"
    assert ok.json()["elapsed_ms"] >= 0

    failed = client.post(f"{DESTINATIONS}/{down['id']}/echo", headers=operator)
    assert failed.status_code == 200, failed.text
    assert failed.json()["ok"] is False
    assert failed.json()["status"] is None
    assert "cannot connect to 127.0.0.1" in failed.json()["error"]

    echoes = audit_events(sessions, "destination.echo")
    assert [(e.actor, e.target_id, e.outcome) for e in echoes] == [
        ("user:operator", str(up["id"]), "ok"),
        ("user:operator", str(down["id"]), "failed"),
    ]
    assert echoes[1].detail["error"] == failed.json()["error"]
