"""Authentication and the audit trail over real databases: tokens, API keys, roles, refusals."""

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from db.models import ApiKey, AuditEvent, Role, User
from db.session import transaction
from radlight.settings import Settings
from services.security import (
    hash_password,
    issue_token,
    load_secret_key,
    make_api_key,
    verify_password,
)
from tests.services.conftest import PASSWORD

STUDIES = "/api/v1/studies"


def events(sessions: sessionmaker[Session], action: str) -> list[AuditEvent]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
        )


def test_anonymous_gets_401_with_a_bearer_challenge(client: TestClient) -> None:
    response = client.get(STUDIES)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["detail"] == "not authenticated"


@pytest.mark.usefixtures("role_headers")
def test_password_flow_issues_a_token_that_opens_the_api(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    response = client.post("/api/v1/auth/token", data={"username": "viewer", "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 15 * 60
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.get("/api/v1/auth/me", headers=headers).json() == {
        "actor": "user:viewer",
        "role": "viewer",
        "username": "viewer",
    }
    assert client.get(STUDIES, headers=headers).status_code == 200
    logins = events(sessions, "auth.login")
    assert [(e.actor, e.outcome) for e in logins] == [("user:viewer", "ok")]
    assert logins[0].client_address == "testclient"


@pytest.mark.usefixtures("role_headers")
@pytest.mark.parametrize(
    ("username", "password"),
    [("viewer", "wrong password here"), ("nobody", PASSWORD), ("viewer", "")],
)
def test_wrong_credentials_get_401_and_are_audited(
    client: TestClient, sessions: sessionmaker[Session], username: str, password: str
) -> None:
    response = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert response.status_code in (401, 422)
    if response.status_code == 401:
        assert response.json()["detail"] == "wrong username or password"
        assert [e.outcome for e in events(sessions, "auth.login")] == ["denied"]


def test_disabled_user_token_stops_working_at_once(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
) -> None:
    headers = role_headers[Role.OPERATOR]
    assert client.get(STUDIES, headers=headers).status_code == 200
    with transaction(sessions) as session:
        user = session.scalars(select(User).where(User.username == "operator")).one()
        user.active = False
    response = client.get(STUDIES, headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or expired token"


@pytest.mark.usefixtures("role_headers")
@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.",  # alg none
        "expired",
        "other-key",
    ],
)
def test_bad_tokens_get_401(client: TestClient, app_settings: Settings, token: str) -> None:
    if token == "expired":
        key = load_secret_key(app_settings)
        token = issue_token("admin", key, timedelta(seconds=-1)).access_token
    elif token == "other-key":
        token = issue_token("admin", b"x" * 40, timedelta(minutes=5)).access_token
    response = client.get(STUDIES, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_api_keys_authenticate_and_can_be_revoked(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    key = make_api_key()
    with transaction(sessions) as session:
        session.add(
            ApiKey(name="ris", prefix=key.prefix, secret_sha256=key.secret_sha256, role=Role.VIEWER)
        )
    headers = {"X-API-Key": key.token}
    assert client.get("/api/v1/auth/me", headers=headers).json()["actor"] == "apikey:ris"
    as_bearer = {"Authorization": f"Bearer {key.token}"}  # for clients that only send a bearer
    assert client.get("/api/v1/auth/me", headers=as_bearer).json()["actor"] == "apikey:ris"
    assert client.get(STUDIES, headers=headers).status_code == 200
    wrong = {"X-API-Key": key.token[:-1] + ("A" if key.token[-1] != "A" else "B")}
    assert client.get(STUDIES, headers=wrong).status_code == 401
    assert client.get(STUDIES, headers={"X-API-Key": "rlk_nope"}).status_code == 401
    with transaction(sessions) as session:
        stored = session.scalars(select(ApiKey)).one()
        assert stored.last_used_at is not None
        assert key.secret not in stored.secret_sha256
        stored.revoked_at = datetime.now(UTC)
    response = client.get(STUDIES, headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or revoked API key"


def test_reads_of_patient_level_data_are_audited(
    client: TestClient, sessions: sessionmaker[Session], viewer: dict[str, str]
) -> None:
    client.get(STUDIES, headers=viewer)
    client.get(f"{STUDIES}/1.2.3", headers=viewer)  # 404: nothing was read, nothing recorded
    listed = events(sessions, "study.list")
    assert [(e.actor, e.role, e.outcome) for e in listed] == [("user:viewer", "viewer", "ok")]
    assert events(sessions, "study.read") == []


def test_audit_trail_is_append_only_in_the_database(
    client: TestClient, sessions: sessionmaker[Session], viewer: dict[str, str]
) -> None:
    client.get(STUDIES, headers=viewer)
    with sessions() as session:
        for statement in ("UPDATE audit_event SET actor = 'x'", "DELETE FROM audit_event"):
            with pytest.raises(DatabaseError, match="append-only"):
                session.execute(text(statement))
            session.rollback()
        assert session.scalar(select(AuditEvent.actor)) == "user:viewer"


def test_password_hashes_are_argon2id_and_verify() -> None:
    hashed = hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$")
    assert verify_password(PASSWORD, hashed)
    assert not verify_password(PASSWORD + "x", hashed)
    assert not verify_password(PASSWORD, None)
    assert not verify_password(PASSWORD, "not a hash")


def test_secret_key_file_is_private_and_stable(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = load_secret_key(settings)
    assert load_secret_key(settings) == first
    assert len(first) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_cli_creates_the_first_admin_without_a_default_password(
    tmp_path: Path, sessions: sessionmaker[Session], database_url: str
) -> None:
    env = {"RADLIGHT_DATA_DIR": str(tmp_path), "RADLIGHT_DATABASE_URL": database_url}

    def run(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "radlight", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**env, "PATH": "/usr/bin:/bin"},
            timeout=60,
            check=False,
        )

    weak = run("users", "create", "root", "--role", "admin", "--password-stdin", stdin="short\n")
    assert weak.returncode == 1
    assert "at least 12 characters" in weak.stderr
    made = run("users", "create", "root", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert made.returncode == 0, made.stderr
    again = run("users", "create", "root", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert again.returncode == 1
    key = run("api-keys", "create", "ris", "--role", "viewer", stdin="")
    assert key.returncode == 0, key.stderr
    with sessions() as session:
        user = session.scalars(select(User)).one()
        assert (user.username, user.role) == ("root", Role.ADMIN)
        assert verify_password(PASSWORD, user.password_hash)
        assert PASSWORD not in made.stdout + made.stderr
        stored = session.scalars(select(ApiKey)).one()
        assert key.stdout.strip().startswith(f"rlk_{stored.prefix}_")
