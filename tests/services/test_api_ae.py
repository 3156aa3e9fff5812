"""The calling-AE allow-list through the API, and a running `radlight dicom-node` process that
follows it without a restart (dcmtk's echoscu as the caller), on SQLite and PostgreSQL."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import AllowedCallingAE, AuditEvent, Role
from radlight.settings import Settings
from services.app import create_app
from tests.peers import (
    ECHOSCU,
    Service,
    dicom_env,
    free_port,
    radlight_service,
    require_tools,
    wait_for,
)
from tests.services.roles import assert_roles

ALLOWED = "/api/v1/ae/allowed-calling"
NOT_RECOGNISED = "calling ae title not recognized"  # dcmtk's wording of the A-ASSOCIATE-RJ reason


def test_admin_adds_and_removes_calling_aes(
    client: TestClient, sessions: sessionmaker[Session], role_headers: dict[Role, dict[str, str]]
) -> None:
    admin, operator = role_headers[Role.ADMIN], role_headers[Role.OPERATOR]
    empty = client.get(ALLOWED, headers=operator).json()
    assert empty == {"accepts_any": True, "entries": [], "from_settings": [], "note": empty["note"]}

    added = client.post(
        ALLOWED, json={"ae_title": " MODALITY1 ", "description": "CR room 2"}, headers=admin
    )
    assert added.status_code == 201, added.text
    entry = added.json()
    assert (entry["ae_title"], entry["description"]) == ("MODALITY1", "CR room 2")
    listed = client.get(ALLOWED, headers=operator).json()
    assert listed["accepts_any"] is False
    assert [e["ae_title"] for e in listed["entries"]] == ["MODALITY1"]

    again = client.post(ALLOWED, json={"ae_title": "MODALITY1"}, headers=admin)
    assert again.status_code == 409
    assert "on the allow-list already" in again.json()["detail"]

    assert client.delete(f"{ALLOWED}/{entry['id']}", headers=admin).status_code == 204
    assert client.delete(f"{ALLOWED}/{entry['id']}", headers=admin).status_code == 404
    assert client.get(ALLOWED, headers=operator).json()["accepts_any"] is True
    with sessions() as session:
        assert session.scalars(select(AllowedCallingAE)).all() == []
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action.startswith("ae.")).order_by(AuditEvent.id)
        ).all()
    assert [(e.action, e.actor, e.detail["ae_title"]) for e in events] == [
        ("ae.allow", "user:admin", "MODALITY1"),
        ("ae.disallow", "user:admin", "MODALITY1"),
    ]


def test_settings_entries_are_shown_read_only(
    tmp_path: Path, database_url: str, role_headers: dict[Role, dict[str, str]]
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, allowed_calling_aes="PACS, RIS"
    )
    with TestClient(create_app(settings)) as client:
        shown = client.get(ALLOWED, headers=role_headers[Role.OPERATOR]).json()
    assert (shown["accepts_any"], shown["from_settings"]) == (False, ["PACS", "RIS"])


def test_every_endpoint_for_every_role(
    client: TestClient, role_headers: dict[Role, dict[str, str]]
) -> None:
    assert_roles(client, role_headers, "GET", ALLOWED, least=Role.OPERATOR, ok=200)
    assert_roles(
        client, role_headers, "POST", ALLOWED, least=Role.ADMIN, ok=201, json={"ae_title": "X"}
    )
    entry_id = client.get(ALLOWED, headers=role_headers[Role.ADMIN]).json()["entries"][0]["id"]
    assert_roles(client, role_headers, "DELETE", f"{ALLOWED}/{entry_id}", least=Role.ADMIN, ok=204)


def test_hostile_input_gets_a_4xx(client: TestClient, admin: dict[str, str]) -> None:
    for body, fragment in (
        ({"ae_title": ""}, "at least 1 character"),
        ({"ae_title": "A" * 17}, "at most 16 characters"),
        ({"ae_title": "EVIL\\AE"}, "without backslash"),
        ({"ae_title": "NUL\x00AE"}, "without backslash"),
        ({"ae_title": 7}, "valid string"),
        ({"ae_title": "OK", "description": "d" * 256}, "at most 255 characters"),
        ({"ae_title": "OK", "role": "admin"}, "Extra inputs are not permitted"),
    ):
        response = client.post(ALLOWED, json=body, headers=admin)
        assert response.status_code == 422, (body, response.text)
        assert fragment in response.text, (body, response.text)
    for path, status in (("/0", 422), ("/abc", 422), ("/4242", 404)):
        response = client.delete(ALLOWED + path, headers=admin)
        assert response.status_code == status, (path, response.text)
    assert client.get(ALLOWED, headers=admin).json()["entries"] == []


# -- the running node follows the list ------------------------------------------------------


def echo_as(port: int, calling_ae: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECHOSCU, "-aet", calling_ae, "-aec", "RADLIGHT", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        env=dicom_env(),
        timeout=30,
        check=False,
    )


def accepted(port: int, calling_ae: str) -> bool:
    return echo_as(port, calling_ae).returncode == 0


def rejected_as_unknown(port: int, calling_ae: str) -> bool:
    """True when the node answered an A-ASSOCIATE-RJ saying the calling AE is not recognised."""
    completed = echo_as(port, calling_ae)
    return (
        completed.returncode != 0
        and NOT_RECOGNISED in (completed.stdout + completed.stderr).lower()
    )


@pytest.fixture
def node_port(tmp_path: Path, database_url: str) -> Iterator[int]:
    """A `radlight dicom-node` process on the test's (migrated) database."""
    require_tools()
    port = free_port()
    env = {
        **os.environ,
        "RADLIGHT_DATA_DIR": str(tmp_path / "node-data"),
        "RADLIGHT_DATABASE_URL": database_url,
        "RADLIGHT_DICOM_HOST": "127.0.0.1",
        "RADLIGHT_DICOM_PORT": str(port),
        "RADLIGHT_ALLOWED_CALLING_AES": "PACS",
        "RADLIGHT_LOG_JSON": "false",
    }
    with radlight_service(env, tmp_path, "dicom-node") as node:

        def up() -> bool:
            node.assert_alive()
            return accepted(port, "PACS")

        wait_for(up, timeout=60, what="node C-ECHO")
        yield port
        assert_no_crash(node)


def assert_no_crash(node: Service) -> None:
    node.assert_alive()
    assert "Traceback" not in node.log(), node.log()


def test_a_running_node_follows_the_allow_list_without_restart(
    client: TestClient, admin: dict[str, str], node_port: int
) -> None:
    # The settings' list holds PACS only: a stranger is refused with the proper reason.
    assert accepted(node_port, "PACS")
    assert rejected_as_unknown(node_port, "MODALITY1")

    entry = client.post(ALLOWED, json={"ae_title": "MODALITY1"}, headers=admin).json()
    wait_for(lambda: accepted(node_port, "MODALITY1"), timeout=60, what="MODALITY1 accepted")
    assert accepted(node_port, "PACS")  # the settings' entries stay
    assert rejected_as_unknown(node_port, "INTRUDER")

    assert client.delete(f"{ALLOWED}/{entry['id']}", headers=admin).status_code == 204
    wait_for(
        lambda: rejected_as_unknown(node_port, "MODALITY1"), timeout=60, what="MODALITY1 refused"
    )
    assert accepted(node_port, "PACS")
