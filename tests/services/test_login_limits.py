"""Sign-in limits over real databases: per username, per address, shared by API replicas."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import AuditEvent
from radlight.settings import Settings
from services.app import create_app
from tests.services.conftest import PASSWORD
from tests.services.test_dashboard import sign_in

TOKEN = "/api/v1/auth/token"
# The counting query runs on both backends in the first test; the others need only one.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def app_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        login_max_failures_per_user=2,
        login_max_failures_per_address=4,
        login_lockout_s=600,
    )


@pytest.fixture
def second_replica(app_settings: Settings) -> Iterator[TestClient]:
    """Another API process over the same database, as a second replica would be."""
    with TestClient(create_app(app_settings)) as other:
        yield other


def _token(client: TestClient, username: str, password: str) -> int:
    return client.post(TOKEN, data={"username": username, "password": password}).status_code


def _outcomes(sessions: sessionmaker[Session], actor: str) -> list[str]:
    with sessions() as session:
        query = select(AuditEvent.outcome).where(
            AuditEvent.action == "auth.login", AuditEvent.actor == actor
        )
        return list(session.scalars(query.order_by(AuditEvent.id)))


@pytest.mark.usefixtures("role_headers")
def test_a_username_is_locked_after_its_failures_even_with_the_right_password(
    client: TestClient, second_replica: TestClient, sessions: sessionmaker[Session]
) -> None:
    assert _token(client, "viewer", "wrong password 1") == 401
    assert _token(second_replica, "viewer", "wrong password 2") == 401  # the other replica
    refused = client.post(TOKEN, data={"username": "viewer", "password": PASSWORD})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "600"
    assert "too many failed sign-ins for this username" in refused.json()["detail"]
    assert _token(second_replica, "viewer", PASSWORD) == 429
    assert _outcomes(sessions, "user:viewer") == ["denied"] * 2 + ["throttled"] * 2
    # Other usernames are not affected.
    assert _token(client, "admin", PASSWORD) == 200


@SQLITE_ONLY
@pytest.mark.usefixtures("role_headers")
def test_a_successful_sign_in_resets_the_username_count(client: TestClient) -> None:
    assert _token(client, "operator", "not the password") == 401
    assert _token(client, "operator", PASSWORD) == 200
    assert _token(client, "operator", "not the password") == 401
    assert _token(client, "operator", PASSWORD) == 200  # one failure since the last success


@SQLITE_ONLY
@pytest.mark.usefixtures("role_headers")
def test_one_address_trying_many_usernames_is_locked(client: TestClient) -> None:
    for attempt in range(4):
        assert _token(client, f"guess{attempt}", "password guess") == 401
    refused = client.post(TOKEN, data={"username": "admin", "password": PASSWORD})
    assert refused.status_code == 429
    assert "from this address" in refused.json()["detail"]


@SQLITE_ONLY
@pytest.mark.usefixtures("role_headers")
def test_the_dashboard_sign_in_shares_the_limit(client: TestClient) -> None:
    for _ in range(2):
        assert sign_in(client, "viewer", "wrong password").status_code == 401
    locked = sign_in(client, "viewer", PASSWORD)
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.text
    assert "radlight_session" not in locked.cookies
