"""POST /api/v1/studies/{uid}/report keeps the text and queues one grounding job per text; the
viewer pages refuse what they cannot show. (The job's run is in tests/workers; the whole path,
with the browser, in tests/integration/test_grounding_end_to_end.py.)"""

from datetime import timedelta
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.config import upsert_route
from db.jobs import create_job_if_new
from db.models import Job, JobState, Role, Study, StudyReport
from db.session import transaction
from dicom_node.store import InstanceStore
from radlight.contracts import QUEUE_INFERENCE, TASK_PROCESS_JOB
from radlight.settings import Settings
from services.app import create_app
from services.auth import SESSION_COOKIE
from services.security import issue_token, load_secret_key
from tests.brokers import redis_lists
from tests.dicom_io import store_and_record, to_bytes
from tests.grounding_study import phantom_image, report_sr
from tests.peers import run_redis
from tests.services.seed import audit_events

TEXT = "Small left pleural effusion. No pneumothorax."


def _stored_study(settings: Settings, sessions: sessionmaker[Session], *, routed: bool) -> str:
    image = phantom_image("reports")
    store = InstanceStore(settings.store_dir)
    outcome = store_and_record(store, sessions, to_bytes(image))
    store_and_record(store, sessions, to_bytes(report_sr(image)))
    if routed:
        with transaction(sessions) as session:
            route = upsert_route(session=session, name="chest", model_name="tiny-test-classifier")
            create_job_if_new(
                session=session,
                study_id=outcome.study_id,
                route=route,
                sop_instance_uids=[str(image.SOPInstanceUID)],
            )
    return str(image.StudyInstanceUID)


def test_posting_a_report_queues_one_grounding_job_per_text(
    app_settings: Settings,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    tmp_path: Path,
) -> None:
    study_uid = _stored_study(app_settings, sessions, routed=True)
    # A private Redis as the broker: kombu's filesystem transport keeps its exchange tables in
    # process-wide state, so a second app in one test process may not route its messages.
    with run_redis(tmp_path / "redis") as broker:
        settings = app_settings.model_copy(update={"broker_url": broker.url})
        with TestClient(create_app(settings)) as client:
            _post_reports(client, sessions, role_headers, study_uid)
        sent = redis_lists(redis.Redis.from_url(broker.url))[QUEUE_INFERENCE]
    with sessions() as session:
        jobs = list(session.scalars(select(Job).where(Job.report_id.is_not(None)).order_by(Job.id)))
    assert len(jobs) == 2  # one per text
    assert sorted((m.task, m.kwargs["job_id"]) for m in sent) == [
        (TASK_PROCESS_JOB, job.id) for job in jobs
    ]
    events = audit_events(sessions, "study.report")
    assert len(events) == 3
    assert all("effusion" not in str(e.detail).lower() for e in events)


def _post_reports(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    study_uid: str,
) -> None:
    url = f"/api/v1/studies/{study_uid}/report"
    operator = role_headers[Role.OPERATOR]
    assert client.post(url, json={"text": TEXT}).status_code == 401
    refused = client.post(url, json={"text": TEXT}, headers=role_headers[Role.VIEWER])
    assert refused.status_code == 403

    first = client.post(url, json={"text": TEXT}, headers=operator)
    assert first.status_code == 202, first.text
    body = first.json()
    assert body["new_job"] is True
    assert body["queued"] is True
    assert body["job"]["state"] == JobState.QUEUED.value
    again = client.post(url, json={"text": TEXT}, headers=operator)
    assert again.status_code == 202
    assert again.json()["new_job"] is False
    assert again.json()["job"]["id"] == body["job"]["id"]
    other = client.post(url, json={"text": "Right upper zone consolidation."}, headers=operator)
    assert other.json()["job"]["id"] != body["job"]["id"]

    with sessions() as session:
        reports = list(session.scalars(select(StudyReport).order_by(StudyReport.id)))
        job = session.get(Job, body["job"]["id"])
        assert job is not None
        assert [r.text for r in reports] == [TEXT, "Right upper zone consolidation."]
        assert job.report_id == reports[0].id
        assert reports[0].created_by == "user:operator"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_posting_a_report_refuses_what_it_cannot_ground(
    client: TestClient,
    app_settings: Settings,
    sessions: sessionmaker[Session],
    admin: dict[str, str],
) -> None:
    study_uid = _stored_study(app_settings, sessions, routed=False)
    unrouted = client.post(
        f"/api/v1/studies/{study_uid}/report", json={"text": TEXT}, headers=admin
    )
    assert unrouted.status_code == 409
    assert "has not been analysed yet" in unrouted.json()["detail"]
    missing = client.post("/api/v1/studies/1.2.3/report", json={"text": TEXT}, headers=admin)
    assert missing.status_code == 404
    for text in ("", "  \n ", "x" * 20_001):
        bad = client.post(f"/api/v1/studies/{study_uid}/report", json={"text": text}, headers=admin)
        assert bad.status_code == 422, text[:10]
    with sessions() as session:
        assert session.scalars(select(StudyReport)).all() == []
        assert session.scalars(select(Study)).one().jobs == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_viewer_signs_in_first_and_refuses_what_it_cannot_show(
    client: TestClient, app_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    study_uid = _stored_study(app_settings, sessions, routed=False)
    page = f"/dashboard/viewer/studies/{study_uid}"
    anonymous = client.get(page, follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"].endswith(
        "/dashboard/login?next=%2Fdashboard%2Fviewer%2Fstudies%2F" + study_uid
    )
    with transaction(sessions) as session:
        from db.models import User
        from services.security import hash_password

        session.add(User(username="v", password_hash=hash_password("p" * 12), role=Role.VIEWER))
    token = issue_token("v", load_secret_key(app_settings), timedelta(minutes=5)).access_token
    client.cookies.set(SESSION_COOKIE, token, path="/dashboard")

    # No classifier installed: the page still shows the image and the report, and says why
    # nothing can light up.
    shown = client.get(page)
    assert shown.status_code == 200
    assert "Grounding is unavailable: no classifier is installed" in shown.text
    assert "Large right pleural effusion" in shown.text
    assert "script-src 'self'" in shown.headers["content-security-policy"]
    assert "<script>" not in shown.text  # no inline script: only viewer.js
    assert client.get(f"{page}/image.png").headers["content-type"] == "image/png"
    assert client.get(f"{page}/overlays/0.png").status_code == 404
    assert client.get("/dashboard/viewer/studies/1.2.3").status_code == 404
    assert client.get("/dashboard/viewer/studies/not-a-uid").status_code == 422
    assert client.get("/dashboard/static/viewer.js").status_code == 200
    assert [e.action for e in audit_events(sessions, "viewer.open")] == ["viewer.open"]
