"""The audit trail over the API on SQLite and PostgreSQL: admins only, every filter, newest first,
and the query itself recorded."""

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import AuditEvent, Role
from tests.services.seed import assert_read_by, assert_refused, audit_events, seed

AUDIT = "/api/v1/audit"


def test_only_admins_read_the_audit_trail(
    client: TestClient, sessions: sessionmaker[Session], role_headers: dict[Role, dict[str, str]]
) -> None:
    assert_read_by(client, role_headers, Role.ADMIN, AUDIT)
    denied = audit_events(sessions, "access.denied")
    assert sorted((e.actor, e.target_id) for e in denied) == [
        ("user:operator", f"GET {AUDIT}"),
        ("user:viewer", f"GET {AUDIT}"),
    ]


def test_audit_query_filters_newest_first_and_records_itself(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    admin: dict[str, str],
) -> None:
    s = seed(sessions)
    viewer, operator = role_headers[Role.VIEWER], role_headers[Role.OPERATOR]
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert client.get(f"/api/v1/studies/{s.study_uid}", headers=viewer).status_code == 200
    assert client.post(f"/api/v1/jobs/{s.job_id}/retry", headers=viewer).status_code == 403
    assert client.post(f"/api/v1/jobs/{s.job_id}/retry", headers=operator).status_code == 202
    assert client.post(f"/api/v1/jobs/{s.job_id}/cancel", headers=operator).status_code == 200
    assert client.post(f"/api/v1/jobs/{s.job_id}/cancel", headers=operator).status_code == 409

    def query(**params: str | int) -> dict[str, object]:
        response = client.get(AUDIT, params=params, headers=admin)
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    def actions(**params: str | int) -> list[tuple[str, str, str]]:
        items = query(**params)["items"]
        assert isinstance(items, list)
        return [(e["actor"], e["action"], e["outcome"]) for e in items]

    everything = actions()
    assert everything == [
        ("user:operator", "job.cancel", "failed"),
        ("user:operator", "job.cancel", "ok"),
        ("user:operator", "job.retry", "ok"),
        ("user:viewer", "access.denied", "denied"),
        ("user:viewer", "study.read", "ok"),
    ]
    # The first query is recorded, after its own page was read.
    assert actions(action="audit.query") == [("user:admin", "audit.query", "ok")]
    assert actions(actor="user:viewer") == [
        ("user:viewer", "access.denied", "denied"),
        ("user:viewer", "study.read", "ok"),
    ]
    assert actions(target_type="job", target_id=str(s.job_id)) == everything[:3]
    assert actions(target_type="study", target_id=s.study_uid) == [everything[4]]
    assert actions(outcome="failed") == [everything[0]]
    assert actions(action="job.cancel", outcome="ok") == [everything[1]]
    assert actions(**{"from": before.isoformat(), "action": "study.read"}) == [everything[4]]
    assert actions(**{"to": before.isoformat()}) == []
    assert actions(**{"from": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}) == []

    page = query(limit=2, offset=1, actor="user:operator")
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 1)
    items = page["items"]
    assert isinstance(items, list)
    assert [e["action"] for e in items] == ["job.cancel", "job.retry"]
    retry = items[1]
    assert retry["target_type"] == "job"
    assert retry["target_id"] == str(s.job_id)
    assert retry["role"] == "operator"
    assert retry["client_address"] == "testclient"
    assert retry["detail"] == {"previous": "failed"}
    assert retry["at"].endswith("Z")

    with sessions() as session:
        queries = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "audit.query")
        )
    assert queries == 11


@pytest.mark.parametrize(
    "query",
    [
        "from=2025-01-01T00:00:00",
        "to=not-a-time",
        "from=9999-12-31T23:59:59-05:00",
        "actor=",
        "actor=" + "a" * 81,
        "target_id=" + "1" * 129,
        "limit=0",
        "offset=-1",
    ],
)
def test_hostile_audit_queries_get_a_422(
    client: TestClient, admin: dict[str, str], query: str
) -> None:
    assert_refused(client, admin, "GET", f"{AUDIT}?{query}", 422)
