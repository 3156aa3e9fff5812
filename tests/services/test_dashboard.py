"""The dashboard over real databases: sign-in, roles per page, CSRF, the buttons, the audit trail.

Users sign in through the real form (Argon2 and the session cookie included); the buttons queue
their work on the app's real (filesystem) broker.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from urllib.parse import urlencode

import pydicom
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.config import upsert_destination, upsert_route
from db.ingest import ReceivedInstance, record_instance
from db.jobs import create_job_if_new
from db.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    Job,
    JobState,
    Result,
    ResultKind,
    Role,
    Route,
    Study,
    StudyState,
    User,
)
from db.session import transaction
from models.export import BuiltModel, build_tiny_classifier
from models.precision import FP16_RECORD, make_fp16_copy, prepared_batch
from models.preprocess import prepare_image
from models.registry import ModelRegistry
from radlight.contracts import QUEUE_DELIVERY, QUEUE_INFERENCE
from radlight.settings import Settings
from services.app import create_app
from services.auth import SESSION_COOKIE
from services.security import issue_token, load_secret_key
from tests.peers import run_orthanc
from tests.services.conftest import PASSWORD
from tests.workers.conftest import receive
from workers.context import build_context
from workers.imaging import load_frontal_chest
from workers.pipeline import run_job

D = "/dashboard"
UID_ROOT = "1.2.826.0.1.3680043.8.498"
REASON = "cannot reach 127.0.0.1:1: [Errno 111] Connection refused"


def received(n: int, *, modality: str = "DX", calling_ae: str = "PACS") -> ReceivedInstance:
    return ReceivedInstance(
        study_instance_uid=f"{UID_ROOT}.{n}.1",
        series_instance_uid=f"{UID_ROOT}.{n}.2",
        sop_instance_uid=f"{UID_ROOT}.{n}.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        body_part_examined="CHEST",
        view_position="PA",
        relative_path=f"instances/{n}.dcm",
        size_bytes=1024,
        sha256="0" * 64,
        calling_ae=calling_ae,
        called_ae="RADLIGHT",
    )


@dataclass(frozen=True)
class Seeded:
    """One study whose job failed, one whose job succeeded but whose delivery failed."""

    failed_study: int
    failed_job: int
    study: int
    study_uid: str
    job: int
    result: int
    delivery: int
    destination: int
    route: int


def _job(session: Session, n: int, state: JobState, reason: str | None = None) -> Job:
    outcome = record_instance(received(n), session=session)
    route = upsert_route(
        session=session, name="chest", model_name="chexnet", destination_names=["pacs"]
    )
    job = create_job_if_new(
        session=session,
        study_id=outcome.study_id,
        route=route,
        sop_instance_uids=[received(n).sop_instance_uid],
    )
    assert job is not None
    job.state, job.reason = state, reason
    now = datetime.now(UTC)
    job.queued_at, job.started_at, job.finished_at = now, now, now + timedelta(seconds=2)
    session.flush()
    return job


@pytest.fixture
def seeded(sessions: sessionmaker[Session]) -> Seeded:
    with transaction(sessions) as session:
        destination = upsert_destination(
            session=session, name="pacs", host="127.0.0.1", port=1, ae_title="PACS"
        )
        failed = _job(session, 1, JobState.FAILED, "model file does not match its card")
        job = _job(session, 2, JobState.SUCCEEDED)
        result = Result(
            job_id=job.id,
            kind=ResultKind.FINDINGS_SR,
            sop_instance_uid=f"{UID_ROOT}.2.9",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
            series_instance_uid=f"{UID_ROOT}.2.8",
            source_sop_instance_uid=None,
            relative_path="results/sr.dcm",
            model_name="chexnet",
            model_version="1.0.0",
            summary={
                "findings": {f"{UID_ROOT}.2.3": {"Effusion": 0.91, "Mass": 0.12}},
                "present": {f"{UID_ROOT}.2.3": ["Effusion"]},
            },
        )
        session.add(result)
        session.flush()
        delivery = Delivery(
            result_id=result.id,
            destination_id=destination.id,
            state=DeliveryState.FAILED,
            attempts=1,
            reason=REASON,
        )
        session.add(delivery)
        session.flush()
        return Seeded(
            failed.study_id,
            failed.id,
            job.study_id,
            received(2).study_instance_uid,
            job.id,
            result.id,
            delivery.id,
            destination.id,
            job.route_id,
        )


def sign_in(
    client: TestClient, username: str, password: str = PASSWORD, next_: str = ""
) -> Response:
    """The real form: fetch it (token and nonce cookie), then post the credentials."""
    client.cookies.clear()
    form = client.get(f"{D}/login")
    assert form.status_code == 200
    token = re.search(r'name="form_token" value="([^"]+)"', form.text)
    assert token is not None
    return client.post(
        f"{D}/login",
        data={"username": username, "password": password, "form_token": token[1], "next": next_},
        follow_redirects=False,
    )


def as_role(client: TestClient, role: Role) -> str:
    """Sign in as the fixture user of ``role``; returns the session's CSRF token."""
    response = sign_in(client, role.value)
    assert response.status_code == 303, response.text
    page = client.get(f"{D}/")
    assert page.status_code == 200
    return csrf_of(page.text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert found is not None, "no CSRF token on the page"
    return found[1]


def events(sessions: sessionmaker[Session], action: str) -> list[AuditEvent]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
        )


def delivery_state(sessions: sessionmaker[Session], delivery_id: int) -> DeliveryState:
    with sessions() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        return delivery.state


def job_state(sessions: sessionmaker[Session], job_id: int) -> JobState:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.state


def press(client: TestClient, path: str, csrf: str, **fields: str) -> Response:
    """Submit a dashboard button's form (not following the redirect)."""
    return client.post(D + path, data={"csrf_token": csrf, **fields}, follow_redirects=False)


def queued_messages(settings: Settings, queue: str = "*") -> int:
    """Messages waiting in ``queue`` of the app's filesystem broker (the embedded default)."""
    return len(list((settings.queue_dir / "messages").glob(f"*.{queue}.msg")))


READ_PAGES = [
    ("/", Role.VIEWER),
    ("/overview/live", Role.VIEWER),
    ("/studies", Role.VIEWER),
    ("/studies/{study}", Role.VIEWER),
    ("/audit", Role.ADMIN),
    ("/destinations", Role.OPERATOR),
    ("/routes", Role.OPERATOR),
    ("/models", Role.OPERATOR),
    ("/destinations/{destination}/edit", Role.ADMIN),
    ("/routes/{route}/edit", Role.ADMIN),
]


def _path(template: str, seeded: Seeded) -> str:
    return D + template.format(
        study=seeded.study, destination=seeded.destination, route=seeded.route
    )


# --- anonymous --------------------------------------------------------------------------------


def test_anonymous_is_sent_to_sign_in(client: TestClient, seeded: Seeded) -> None:
    for page, _ in READ_PAGES:
        path = _path(page, seeded)
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == f"{D}/login?" + urlencode({"next": path})
        assert "text/html" not in response.headers.get("content-type", "")  # no page content


def test_anonymous_posts_change_nothing(
    client: TestClient, seeded: Seeded, sessions: sessionmaker[Session]
) -> None:
    response = client.post(
        f"{D}/deliveries/{seeded.delivery}/retry",
        data={"csrf_token": "0" * 64},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"{D}/login"
    assert delivery_state(sessions, seeded.delivery) is DeliveryState.FAILED


# --- signing in -------------------------------------------------------------------------------


@pytest.mark.usefixtures("role_headers")
def test_sign_in_sets_a_strict_http_only_cookie_and_is_audited(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    response = sign_in(client, "viewer", next_=f"{D}/studies")
    assert response.status_code == 303
    assert response.headers["location"] == f"{D}/studies"
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "=")
    )
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/dashboard"} <= attributes
    assert "secure" not in attributes
    assert client.get(f"{D}/studies").status_code == 200
    logins = events(sessions, "auth.login")
    assert [(e.actor, e.role, e.outcome, e.detail) for e in logins] == [
        ("user:viewer", "viewer", "ok", {"via": "dashboard"})
    ]


@pytest.mark.usefixtures("role_headers")
@pytest.mark.parametrize(
    ("username", "password"), [("viewer", "not the password!"), ("nobody", PASSWORD)]
)
def test_wrong_credentials_show_the_form_again_and_are_audited(
    client: TestClient, sessions: sessionmaker[Session], username: str, password: str
) -> None:
    response = sign_in(client, username, password)
    assert response.status_code == 401
    assert "Wrong username or password." in response.text
    assert f'value="{username}"' in response.text  # the username is kept, not the password
    assert password not in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert [(e.actor, e.outcome) for e in events(sessions, "auth.login")] == [
        (f"user:{username}", "denied")
    ]
    assert client.get(f"{D}/", follow_redirects=False).status_code == 303


@pytest.mark.usefixtures("role_headers")
def test_sign_in_without_the_form_token_is_refused(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    response = client.post(
        f"{D}/login", data={"username": "viewer", "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 403
    assert "expired" in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert events(sessions, "auth.login") == []


@pytest.mark.usefixtures("role_headers")
def test_sign_in_never_redirects_off_the_dashboard(client: TestClient) -> None:
    for target in (
        "https://evil.example/",
        "//evil.example/x",
        "/api/v1/studies",
        "/\\evil.example",
    ):
        response = sign_in(client, "viewer", next_=target)
        assert response.status_code == 303, target
        assert response.headers["location"] == f"{D}/", target


def test_secure_cookie_behind_https(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url, secure_cookies=True)
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        response = client.get(f"{D}/login")
    nonce = response.headers["set-cookie"].lower()
    assert "; secure" in nonce


@pytest.mark.usefixtures("role_headers")
def test_sign_out_ends_the_session(client: TestClient, sessions: sessionmaker[Session]) -> None:
    csrf = as_role(client, Role.VIEWER)
    response = client.post(f"{D}/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"{D}/login"
    assert client.get(f"{D}/", follow_redirects=False).status_code == 303
    assert [e.actor for e in events(sessions, "auth.logout")] == ["user:viewer"]


@pytest.mark.usefixtures("role_headers")
def test_expired_forged_or_disabled_sessions_are_sent_to_sign_in(
    client: TestClient, app_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    key = load_secret_key(app_settings)
    expired = issue_token("admin", key, timedelta(seconds=-1)).access_token
    forged = issue_token("admin", b"x" * 48, timedelta(minutes=5)).access_token
    for token in (expired, forged, "not-a-token"):
        client.cookies.set(SESSION_COOKIE, token, path=D)
        assert client.get(f"{D}/", follow_redirects=False).status_code == 303
    client.cookies.clear()
    client.cookies.set(
        SESSION_COOKIE, issue_token("admin", key, timedelta(minutes=5)).access_token, path=D
    )
    assert client.get(f"{D}/").status_code == 200
    with transaction(sessions) as session:
        user = session.scalars(select(User).where(User.username == "admin")).one()
        user.active = False
    assert client.get(f"{D}/", follow_redirects=False).status_code == 303


# --- pages per role ---------------------------------------------------------------------------


@pytest.mark.usefixtures("role_headers")
@pytest.mark.parametrize("role", list(Role))
def test_each_page_for_each_role(
    client: TestClient, seeded: Seeded, sessions: sessionmaker[Session], role: Role
) -> None:
    as_role(client, role)
    for page, least in READ_PAGES:
        response = client.get(_path(page, seeded))
        if role.includes(least):
            assert response.status_code == 200, (page, response.text)
            assert "NOT FOR PRIMARY DIAGNOSIS" in response.text or page == "/overview/live"
        else:
            assert response.status_code == 403, page
            assert f"needs the {least.value} role" in response.text
    denied = events(sessions, "access.denied")
    expected = [p for p, least in READ_PAGES if not role.includes(least)]
    assert [e.target_id for e in denied] == [f"GET {_path(p, seeded)}" for p in expected]
    assert all(e.actor == f"user:{role.value}" for e in denied)


@pytest.mark.usefixtures("role_headers")
def test_overview_shows_failures_with_reasons_and_controls_by_role(
    client: TestClient, seeded: Seeded
) -> None:
    as_role(client, Role.VIEWER)
    page = client.get(f"{D}/").text
    assert REASON in page
    assert "model file does not match its card" in page
    assert f'id="delivery-{seeded.delivery}"' in page
    assert "/retry" not in page  # a viewer sees no buttons
    live = client.get(f"{D}/overview/live").text
    assert REASON in live
    assert "<html" not in live

    as_role(client, Role.OPERATOR)
    page = client.get(f"{D}/").text
    assert f'action="{D}/deliveries/{seeded.delivery}/retry"' in page
    assert f'action="{D}/jobs/{seeded.failed_job}/retry"' in page
    assert f'action="{D}/deliveries/retry-failed"' in page


@pytest.mark.usefixtures("role_headers")
def test_study_page_shows_what_the_api_shows_and_is_audited(
    client: TestClient,
    seeded: Seeded,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
) -> None:
    as_role(client, Role.VIEWER)
    page = client.get(f"{D}/studies/{seeded.study}").text
    assert seeded.study_uid in page
    assert "Effusion" in page
    assert "0.910" in page
    assert REASON in page
    api = client.get(f"/api/v1/studies/{seeded.study_uid}", headers=role_headers[Role.VIEWER])
    assert api.status_code == 200
    # Every DICOM identifier the page shows is one the API shows for this study; nothing more.
    shown = set(re.findall(r"\b\d+(?:\.\d+){4,}\b", page))
    assert shown
    assert shown <= set(re.findall(r"\b\d+(?:\.\d+){4,}\b", api.text))
    assert "patient" not in page.lower()
    reads = [e for e in events(sessions, "study.read") if e.actor == "user:viewer"]
    assert next((e.target_type, e.target_id, e.detail) for e in reads) == (
        "study",
        seeded.study_uid,
        {"via": "dashboard"},
    )


@pytest.mark.usefixtures("role_headers")
def test_studies_filters_and_pages(client: TestClient, sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        for n in range(1, 31):
            record_instance(
                received(n, modality="CR" if n % 3 == 0 else "DX", calling_ae=f"AE{n % 2}"),
                session=session,
            )
        session.flush()
        oldest = session.scalars(select(Study).where(Study.id == 1)).one()
        oldest.first_received_at = oldest.last_received_at = datetime(2020, 1, 2, 12, tzinfo=UTC)
    as_role(client, Role.VIEWER)

    def study_ids(query: str) -> list[int]:
        response = client.get(f"{D}/studies?{query}")
        assert response.status_code == 200, response.text
        return [int(i) for i in re.findall(rf'href="{D}/studies/(\d+)"', response.text)]

    first = client.get(f"{D}/studies").text
    assert "1\u201325 of 30" in first
    assert study_ids("") == list(range(30, 5, -1))
    assert study_ids("offset=25") == [5, 4, 3, 2, 1]
    assert study_ids("modality=cr&state=&calling_ae=&received_from=&received_to=") == list(
        range(30, 0, -3)
    )
    assert study_ids("calling_ae=AE1&modality=CR") == [27, 21, 15, 9, 3]
    assert study_ids("received_to=2020-01-02") == [1]
    assert 1 not in study_ids("received_from=2020-01-03")
    assert study_ids(f"state={StudyState.COMPLETE.value}") == []
    # Paging links keep the filters.
    paged = client.get(f"{D}/studies?state=receiving").text
    assert f'href="{D}/studies?state=receiving&amp;offset=25"' in paged
    listed = events(sessions, "study.list")
    assert len(listed) >= 8
    assert all(e.detail.get("via") == "dashboard" for e in listed)


HOSTILE = [
    ("/studies?offset=-1", 422),
    ("/studies?state=exploded", 400),
    ("/studies?received_from=yesterday", 400),
    ("/studies?modality=" + "X" * 100, 422),
    ("/studies/0", 422),
    ("/studies/99999999999999999999999", 422),
    ("/studies/424242", 404),
    ("/studies/abc", 422),
    ("/static/secret_key", 404),
    ("/static/dashboard.py", 404),
    ("/audit?offset=abc", 422),
    ("/results/424242/preview.png", 404),
]


@pytest.mark.usefixtures("role_headers", "seeded")
def test_hostile_input_gets_an_html_4xx(client: TestClient) -> None:
    as_role(client, Role.ADMIN)
    for path, status in HOSTILE:
        response = client.get(D + path)
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"].startswith("text/html"), path
        assert "<h1>" in response.text, path


@pytest.mark.usefixtures("role_headers")
def test_pages_carry_security_headers_and_are_not_cached(client: TestClient) -> None:
    as_role(client, Role.VIEWER)
    for path in (f"{D}/", f"{D}/login", f"{D}/studies/424242"):
        headers = client.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"
    css = client.get(f"{D}/static/dashboard.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")


# --- the buttons: roles and CSRF --------------------------------------------------------------


@pytest.mark.usefixtures("role_headers")
def test_a_post_without_the_right_csrf_token_is_refused(
    client: TestClient, seeded: Seeded, sessions: sessionmaker[Session], app_settings: Settings
) -> None:
    as_role(client, Role.OPERATOR)
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "0" * 64}, {"csrf_token": "wrong"}):
        response = client.post(f"{D}/deliveries/{seeded.delivery}/retry", data=data)
        assert response.status_code == 403, data
        assert "security token" in response.text
    assert delivery_state(sessions, seeded.delivery) is DeliveryState.FAILED
    assert queued_messages(app_settings) == 0
    refused = events(sessions, "dashboard.csrf")
    assert [(e.actor, e.outcome) for e in refused] == [("user:operator", "denied")] * 4


@pytest.mark.usefixtures("role_headers")
def test_another_sessions_csrf_token_does_not_work(
    client: TestClient, seeded: Seeded, sessions: sessionmaker[Session]
) -> None:
    admins_token = as_role(client, Role.ADMIN)
    as_role(client, Role.OPERATOR)
    response = client.post(
        f"{D}/deliveries/{seeded.delivery}/retry", data={"csrf_token": admins_token}
    )
    assert response.status_code == 403
    assert delivery_state(sessions, seeded.delivery) is DeliveryState.FAILED


@pytest.mark.usefixtures("role_headers")
def test_a_viewer_cannot_retry_or_cancel(
    client: TestClient, seeded: Seeded, sessions: sessionmaker[Session], app_settings: Settings
) -> None:
    csrf = as_role(client, Role.VIEWER)
    targets = [
        D + path.format(delivery=seeded.delivery, job=seeded.failed_job)
        for path in (
            "/deliveries/{delivery}/retry",
            "/jobs/{job}/retry",
            "/jobs/{job}/cancel",
            "/deliveries/retry-failed",
        )
    ]
    for target in targets:
        response = client.post(target, data={"csrf_token": csrf})
        assert response.status_code == 403, target
        assert "needs the operator role" in response.text
    assert delivery_state(sessions, seeded.delivery) is DeliveryState.FAILED
    assert job_state(sessions, seeded.failed_job) is JobState.FAILED
    assert queued_messages(app_settings) == 0
    denied = events(sessions, "access.denied")
    assert [(e.actor, e.target_id) for e in denied] == [
        ("user:viewer", f"POST {target}") for target in targets
    ]


@pytest.mark.usefixtures("role_headers")
def test_an_operator_retries_a_failed_delivery(
    client: TestClient, seeded: Seeded, sessions: sessionmaker[Session], app_settings: Settings
) -> None:
    csrf = as_role(client, Role.OPERATOR)
    response = press(
        client, f"/deliveries/{seeded.delivery}/retry", csrf, back=f"{D}/studies/{seeded.study}"
    )
    assert response.status_code == 303
    assert response.headers["location"] == (
        f"{D}/studies/{seeded.study}?notice=delivery-retried&id={seeded.delivery}"
    )
    assert delivery_state(sessions, seeded.delivery) is DeliveryState.PENDING
    assert queued_messages(app_settings, QUEUE_DELIVERY) == 1
    page = client.get(response.headers["location"]).text
    assert f"Delivery {seeded.delivery} was put back on the queue." in page
    retried = events(sessions, "delivery.retry")
    assert [(e.actor, e.target_id, e.outcome) for e in retried] == [
        ("user:operator", str(seeded.delivery), "ok")
    ]
    # Again: it is no longer failed, so the action is refused with the reason, and audited.
    again = press(client, f"/deliveries/{seeded.delivery}/retry", csrf)
    assert again.status_code == 409
    assert "only failed" in again.text
    assert [e.outcome for e in events(sessions, "delivery.retry")] == ["ok", "failed"]


@pytest.mark.usefixtures("role_headers")
def test_an_operator_retries_a_job_and_cancels_it_while_it_waits(
    client: TestClient, seeded: Seeded, sessions: sessionmaker[Session], app_settings: Settings
) -> None:
    csrf = as_role(client, Role.OPERATOR)
    retry = press(client, f"/jobs/{seeded.failed_job}/retry", csrf)
    assert retry.status_code == 303
    assert retry.headers["location"] == f"{D}/?notice=job-retried&id={seeded.failed_job}"
    assert job_state(sessions, seeded.failed_job) is JobState.QUEUED
    assert queued_messages(app_settings, QUEUE_INFERENCE) == 1
    study_page = client.get(f"{D}/studies/{seeded.failed_study}").text
    assert f'action="{D}/jobs/{seeded.failed_job}/cancel"' in study_page
    cancel = press(client, f"/jobs/{seeded.failed_job}/cancel", csrf)
    assert cancel.status_code == 303
    assert job_state(sessions, seeded.failed_job) is JobState.CANCELLED
    assert [e.action for e in events(sessions, "job.cancel")] == ["job.cancel"]
    missing = press(client, "/jobs/424242/retry", csrf)
    assert missing.status_code == 404


@pytest.mark.usefixtures("role_headers")
def test_retry_all_failed_deliveries(
    client: TestClient, seeded: Seeded, sessions: sessionmaker[Session], app_settings: Settings
) -> None:
    csrf = as_role(client, Role.OPERATOR)
    response = press(client, "/deliveries/retry-failed", csrf)
    assert response.status_code == 303
    assert response.headers["location"] == f"{D}/?notice=deliveries-retried&id=1"
    assert delivery_state(sessions, seeded.delivery) is DeliveryState.PENDING
    assert queued_messages(app_settings, QUEUE_DELIVERY) == 1
    assert client.get(response.headers["location"]).text.count("No failed deliveries.") == 1


@pytest.mark.usefixtures("role_headers")
def test_the_audit_page_lists_and_filters_events(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    as_role(client, Role.VIEWER)
    client.get(f"{D}/audit")  # refused, and audited
    as_role(client, Role.ADMIN)
    page = client.get(f"{D}/audit?outcome=denied").text
    assert "access.denied" in page
    assert "user:viewer" in page
    assert "auth.login" not in page
    assert "auth.login" in client.get(f"{D}/audit?action=auth.login&actor=&outcome=").text
    # Reading the trail is recorded, as the API's query is.
    assert [e.actor for e in events(sessions, "audit.query")] == ["user:admin", "user:admin"]


# --- results from the real pipeline -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.mark.usefixtures("role_headers")
def test_study_page_shows_png_previews_of_real_results(
    client: TestClient,
    app_settings: Settings,
    sessions: sessionmaker[Session],
    tiny_model: BuiltModel,
    real_dicom_files: list[Path],
) -> None:
    """The tiny classifier runs in-process over a real NIH chest X-ray; the page shows a preview
    of every image result (served with the cookie, audited as the API's previews are)."""
    ctx = build_context(app_settings)
    try:
        ctx.registry.install(tiny_model.onnx_path, tiny_model.card)
        outcome = receive(ctx, real_dicom_files[0])
        with transaction(ctx.sessions) as session:
            route = upsert_route(session=session, name="chest", model_name=tiny_model.card.name)
            source_uid = str(
                pydicom.dcmread(real_dicom_files[0], stop_before_pixels=True).SOPInstanceUID
            )
            job = create_job_if_new(
                session=session,
                study_id=outcome.study_id,
                route=route,
                sop_instance_uids=[source_uid],
            )
            assert job is not None
            session.flush()
            job_id = job.id
        assert run_job(job_id, ctx) is JobState.SUCCEEDED
    finally:
        ctx.producer.close()
        ctx.engine.dispose()
    with sessions() as session:
        results = list(session.scalars(select(Result).where(Result.job_id == job_id)))
    images = {r.id for r in results if r.kind in (ResultKind.HEATMAP_SC, ResultKind.SUMMARY_SC)}
    assert images

    as_role(client, Role.VIEWER)
    page = client.get(f"{D}/studies/{outcome.study_id}").text
    shown = {int(i) for i in re.findall(rf'<img src="{D}/results/(\d+)/preview.png"', page)}
    assert shown == images
    assert "Scores for image" in page  # the SR's findings table
    for result_id in sorted(shown):
        response = client.get(f"{D}/results/{result_id}/preview.png")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        picture = Image.open(BytesIO(response.content))
        assert picture.format == "PNG"
        assert max(picture.size) <= 480
    sr = next(r for r in results if r.kind is ResultKind.FINDINGS_SR)
    assert client.get(f"{D}/results/{sr.id}/preview.png").status_code == 404
    previews = events(sessions, "result.preview")
    assert sorted(int(e.target_id or 0) for e in previews) == sorted(shown)
    assert {e.actor for e in previews} == {"user:viewer"}
    client.cookies.clear()
    anonymous = client.get(f"{D}/results/{min(shown)}/preview.png", follow_redirects=False)
    assert anonymous.status_code == 303


# --- configuration pages ----------------------------------------------------------------------


@pytest.fixture
def installed(app_settings: Settings, tiny_model: BuiltModel) -> str:
    """The tiny classifier in the app's model registry; returns its name."""
    ModelRegistry(app_settings.models_dir).install(tiny_model.onnx_path, tiny_model.card)
    return tiny_model.card.name


def route_form(csrf: str, **fields: str | list[str]) -> dict[str, str | list[str]]:
    return {"csrf_token": csrf, "name": "chest", "priority": "100", "enabled": "on", **fields}


@pytest.mark.usefixtures("role_headers")
def test_config_pages_show_the_api_view_and_edit_links_by_role(
    client: TestClient, seeded: Seeded, installed: str
) -> None:
    as_role(client, Role.OPERATOR)
    page = client.get(f"{D}/destinations").text
    assert "127.0.0.1:1" in page
    assert f'action="{D}/destinations/{seeded.destination}/echo"' in page
    assert f'action="{D}/deliveries/retry-failed"' in page  # one failed delivery there
    assert "/edit" not in page
    routes = client.get(f"{D}/routes").text
    assert "chexnet (latest)" in routes
    assert "modality" not in routes  # the seeded route matches anything
    models = client.get(f"{D}/models").text
    assert installed in models
    assert "0.0.0-seed0" in models
    as_role(client, Role.ADMIN)
    assert f'href="{D}/routes/{seeded.route}/edit"' in client.get(f"{D}/routes").text


@pytest.mark.usefixtures("role_headers")
def test_the_models_page_shows_a_versions_fp16_copy_and_why_it_is_not_used(
    client: TestClient, app_settings: Settings, installed: str, real_dicom_files: list[Path]
) -> None:
    (entry,) = ModelRegistry(app_settings.models_dir).list()
    make_fp16_copy(
        entry,
        prepared_batch(
            prepare_image(load_frontal_chest(pydicom.dcmread(f)), entry.card.preprocessing).tensor
            for f in real_dicom_files
        ),
    )
    as_role(client, Role.OPERATOR)
    page = client.get(f"{D}/models").text
    assert "fp16 copy" in page
    assert "checked</span> on 2 images (CPUExecutionProvider)" in page
    record = entry.directory / FP16_RECORD
    record.write_text(record.read_text().replace(entry.card.sha256, "0" * 64))
    page = client.get(f"{D}/models").text
    assert "not used</span>" in page
    assert "was made from another file" in page


@pytest.mark.usefixtures("role_headers")
def test_an_admin_edits_a_route_through_the_api_rules(
    client: TestClient, seeded: Seeded, sessions: sessionmaker[Session], installed: str
) -> None:
    csrf = as_role(client, Role.ADMIN)
    form = client.get(f"{D}/routes/{seeded.route}/edit").text
    assert 'name="model_name"' in form
    assert f'value="{seeded.destination}" checked' in form
    path = f"{D}/routes/{seeded.route}"

    # The API's checks hold: the seeded model is not installed, ages must be in order.
    refused = client.post(path, data=route_form(csrf, model_name="chexnet"))
    assert refused.status_code == 422
    assert "no model named &#39;chexnet&#39; is installed" in refused.text
    backwards = route_form(csrf, model_name=installed, min_age_years="60", max_age_years="18")
    refused = client.post(path, data=backwards)
    assert refused.status_code == 422
    assert "min_age_years must not exceed max_age_years" in refused.text
    assert 'value="60"' in refused.text  # what was typed is shown again
    assert client.post(path, data=route_form(csrf, priority="first")).status_code == 422

    saved = client.post(
        path,
        data=route_form(
            csrf,
            model_name=installed,
            modalities="dx, CR",
            view_positions="PA",
            thresholds="Effusion = 0.35",
            quiet_seconds="2.5",
        ),
        follow_redirects=False,
    )
    assert saved.status_code == 303, saved.text
    assert saved.headers["location"] == f"{D}/routes?notice=route-saved&id={seeded.route}"
    with sessions() as session:
        route = session.get(Route, seeded.route)
        assert route is not None
        assert (route.model_name, route.modalities, route.view_positions) == (
            installed,
            "DX,CR",
            "PA",
        )
        assert route.thresholds == {"Effusion": 0.35}
        assert route.quiet_seconds == 2.5
        assert route.destinations == []  # no destination box ticked
    changed = events(sessions, "route.update")
    assert [(e.actor, e.target_id) for e in changed] == [("user:admin", str(seeded.route))]
    assert set(changed[0].detail["changes"]) >= {"model_name", "modalities", "destinations"}


@pytest.mark.usefixtures("role_headers")
def test_an_operator_cannot_edit_configuration(
    client: TestClient, seeded: Seeded, sessions: sessionmaker[Session], installed: str
) -> None:
    csrf = as_role(client, Role.OPERATOR)
    response = client.post(
        f"{D}/routes/{seeded.route}", data=route_form(csrf, model_name=installed)
    )
    assert response.status_code == 403
    response = client.post(
        f"{D}/destinations/{seeded.destination}",
        data={"csrf_token": csrf, "name": "pacs", "host": "10.0.0.9", "port": "104"},
    )
    assert response.status_code == 403
    assert events(sessions, "route.update") == []
    assert events(sessions, "destination.update") == []


@pytest.mark.usefixtures("role_headers")
def test_echo_fails_on_a_closed_port_then_answers_from_orthanc(
    client: TestClient, seeded: Seeded, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    csrf = as_role(client, Role.OPERATOR)
    down = client.post(f"{D}/destinations/{seeded.destination}/echo", data={"csrf_token": csrf})
    assert down.status_code == 200
    assert "failed after" in down.text
    assert [e.outcome for e in events(sessions, "destination.echo")] == ["failed"]

    with run_orthanc(tmp_path / "orthanc") as orthanc:
        admin_csrf = as_role(client, Role.ADMIN)
        moved = client.post(
            f"{D}/destinations/{seeded.destination}",
            data={
                "csrf_token": admin_csrf,
                "name": "pacs",
                "host": "127.0.0.1",
                "port": str(orthanc.dicom_port),
                "ae_title": orthanc.ae_title,
                "sc_encoding": "lossless",
                "enabled": "on",
            },
            follow_redirects=False,
        )
        assert moved.status_code == 303, moved.text
        up = client.post(
            f"{D}/destinations/{seeded.destination}/echo", data={"csrf_token": admin_csrf}
        )
    assert "answered (status 0x0000)" in up.text
    assert [e.outcome for e in events(sessions, "destination.echo")] == ["failed", "ok"]
    assert [e.actor for e in events(sessions, "destination.update")] == ["user:admin"]
