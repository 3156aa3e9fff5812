"""The read-only API over real databases, including hostile query input."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from db.config import upsert_route
from db.ingest import ReceivedInstance, record_instance
from db.jobs import create_job_if_new
from db.migrate import head_revision
from db.session import transaction
from radlight.settings import Settings
from services.app import create_app

RECEIVED = ReceivedInstance(
    study_instance_uid="1.2.826.0.1.3680043.8.498.1",
    series_instance_uid="1.2.826.0.1.3680043.8.498.2",
    sop_instance_uid="1.2.826.0.1.3680043.8.498.3",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    modality="DX",
    body_part_examined="CHEST",
    view_position="PA",
    relative_path="instances/x.dcm",
    size_bytes=1,
    sha256="0" * 64,
    calling_ae="PACS",
    called_ae="RADLIGHT",
)


@pytest.fixture
def job_id(sessions: sessionmaker[Session]) -> int:
    with transaction(sessions) as session:
        outcome = record_instance(RECEIVED, session=session)
        route = upsert_route(session=session, name="chest", model_name="m")
        job = create_job_if_new(
            session=session,
            study_id=outcome.study_id,
            route=route,
            sop_instance_uids=[RECEIVED.sop_instance_uid],
        )
        assert job is not None
        session.flush()
        return job.id


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["schema"] == head_revision()


def test_ready_is_503_on_an_unmigrated_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    with TestClient(create_app(settings)) as test_client:
        response = test_client.get("/ready")
    assert response.status_code == 503
    assert f"need {head_revision()}" in response.json()["detail"]


def test_studies_and_jobs_are_listed(
    client: TestClient, job_id: int, viewer: dict[str, str]
) -> None:
    studies = client.get("/api/v1/studies", headers=viewer).json()
    assert studies["total"] == 1
    study = studies["items"][0]
    assert study["study_instance_uid"] == RECEIVED.study_instance_uid
    assert study["state"] == "receiving"
    assert "patient" not in str(study).lower()

    one = client.get(f"/api/v1/studies/{RECEIVED.study_instance_uid}", headers=viewer)
    assert one.status_code == 200
    assert one.json()["instance_count"] == 1

    jobs = client.get("/api/v1/jobs", params={"state": "pending"}, headers=viewer).json()
    assert [j["id"] for j in jobs["items"]] == [job_id]
    assert (
        client.get("/api/v1/jobs", params={"state": "failed"}, headers=viewer).json()["total"] == 0
    )
    job = client.get(f"/api/v1/jobs/{job_id}", headers=viewer).json()
    assert job["model_name"] == "m"
    assert job["results"] == []


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/studies?limit=0", 422),
        ("/api/v1/studies?limit=100000", 422),
        ("/api/v1/studies?offset=-1", 422),
        ("/api/v1/studies?state=exploded", 422),
        ("/api/v1/studies/1.2.3.999", 404),
        ("/api/v1/studies/1.2.abc", 422),
        ("/api/v1/studies/' OR 1=1 --", 422),
        ("/api/v1/studies/" + "1." * 40 + "1", 422),
        ("/api/v1/jobs/0", 422),
        ("/api/v1/jobs/-5", 422),
        ("/api/v1/jobs/99999999999999999999999", 422),
        ("/api/v1/jobs/abc", 422),
        ("/api/v1/jobs/424242", 404),
        ("/api/v1/jobs?state=running;DROP TABLE job", 422),
    ],
)
def test_hostile_input_gets_a_4xx_with_a_message(
    client: TestClient, job_id: int, viewer: dict[str, str], path: str, status: int
) -> None:
    response = client.get(path, headers=viewer)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    # The table is still there and still answers.
    assert client.get("/api/v1/jobs", headers=viewer).json()["total"] == 1


def test_timestamps_are_utc(client: TestClient, job_id: int, viewer: dict[str, str]) -> None:
    study = client.get("/api/v1/studies", headers=viewer).json()["items"][0]
    assert study["last_received_at"].endswith(("Z", "+00:00"))
