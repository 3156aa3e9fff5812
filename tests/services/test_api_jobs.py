"""Jobs over the API on SQLite and PostgreSQL: listing, retry, cancel and reprocess by role, what
each does to the row and the queue (kombu's filesystem transport, or a broker that is down), and
the audit trail of every change."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from db.jobs import claim_job, reprocess_input_hash, requeue_candidates
from db.models import Job, JobState, Role, utcnow
from db.session import transaction
from dicom_node.assembly import Assembler
from models.export import BuiltModel, build_tiny_classifier
from models.registry import ModelRegistry
from radlight.contracts import QUEUE_INFERENCE, TASK_PROCESS_JOB
from radlight.queue import TaskProducer
from radlight.settings import Settings
from services.app import create_app
from tests.brokers import folder_messages
from tests.peers import free_port
from tests.services.seed import assert_read_by, assert_refused, assert_role_gate, audit_events, seed

JOBS = "/api/v1/jobs"


def job_row(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def queued_job_ids(settings: Settings) -> list[int]:
    messages = folder_messages(settings.queue_dir, QUEUE_INFERENCE)
    assert {m.task for m in messages} <= {TASK_PROCESS_JOB}
    return sorted(m.kwargs["job_id"] for m in messages)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> list[BuiltModel]:
    """Two versions of the tiny classifier (different weights): 0.0.0-seed0 and 0.0.0-seed1."""
    return [build_tiny_classifier(tmp_path_factory.mktemp(f"tiny{s}"), seed=s) for s in (0, 1)]


@pytest.fixture
def installed(app_settings: Settings, tiny_models: list[BuiltModel]) -> list[str]:
    registry = ModelRegistry(app_settings.models_dir)
    return [registry.install(m.onnx_path, m.card).version for m in tiny_models]


def test_job_routes_admit_roles(
    client: TestClient, sessions: sessionmaker[Session], role_headers: dict[Role, dict[str, str]]
) -> None:
    s = seed(sessions)
    assert_read_by(client, role_headers, Role.VIEWER, JOBS, f"{JOBS}/{s.job_id}")
    for action, body in (("retry", None), ("cancel", None), ("reprocess", {"model_version": "1"})):
        assert_role_gate(
            client, role_headers, "POST", f"{JOBS}/{s.job_id}/{action}", Role.OPERATOR, json=body
        )
    # Nothing moved, and each refusal is in the audit trail.
    assert job_row(sessions, s.job_id).state is JobState.FAILED
    denied = audit_events(sessions, "access.denied")
    assert [(e.actor, e.outcome, e.target_id) for e in denied] == [
        ("user:viewer", "denied", f"POST {JOBS}/{s.job_id}/{action}")
        for action in ("retry", "cancel", "reprocess")
    ]


def test_jobs_are_filtered_and_reads_are_audited(
    client: TestClient, sessions: sessionmaker[Session], viewer: dict[str, str]
) -> None:
    failed = seed(sessions, 1)
    done = seed(sessions, 2, job_state=JobState.SUCCEEDED)

    def ids(**params: str) -> list[int]:
        response = client.get(JOBS, params=params, headers=viewer)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["items"]]

    assert ids() == [done.job_id, failed.job_id]
    assert ids(state="failed") == [failed.job_id]
    assert ids(study_instance_uid=done.study_uid) == [done.job_id]
    assert ids(model_name="tiny-test-classifier", model_version="0.0.0-seed0") == [
        done.job_id,
        failed.job_id,
    ]
    assert ids(model_name="other") == []
    detail = client.get(f"{JOBS}/{failed.job_id}", headers=viewer).json()
    assert detail["reason"] == "model failed: test"
    assert [r["id"] for r in detail["results"]] == [failed.result_id]
    assert detail["results"][0]["deliveries"][0]["state"] == "failed"
    assert len(audit_events(sessions, "job.list")) == 5
    (read,) = audit_events(sessions, "job.read")
    assert (read.actor, read.target_type, read.target_id) == (
        "user:viewer",
        "job",
        str(failed.job_id),
    )


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.NOT_ANALYSED, JobState.CANCELLED])
def test_operator_and_admin_retry_a_finished_job_onto_the_queue(
    client: TestClient,
    app_settings: Settings,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    state: JobState,
) -> None:
    first, second = seed(sessions, 1, job_state=state), seed(sessions, 2, job_state=state)
    for role, s in ((Role.OPERATOR, first), (Role.ADMIN, second)):
        response = client.post(f"{JOBS}/{s.job_id}/retry", headers=role_headers[role])
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["queued"] is True
        assert body["message"] == f"job {s.job_id} reset to pending and queued"
        assert body["job"]["state"] == "queued"
        assert body["job"]["reason"] is None
        assert body["job"]["finished_at"] is None
        job = job_row(sessions, s.job_id)
        assert (job.state, job.reason, job.queued_at is not None) == (JobState.QUEUED, None, True)
    assert queued_job_ids(app_settings) == [first.job_id, second.job_id]
    events = audit_events(sessions, "job.retry")
    assert [(e.actor, e.target_id, e.outcome, e.detail) for e in events] == [
        ("user:operator", str(first.job_id), "ok", {"previous": state.value}),
        ("user:admin", str(second.job_id), "ok", {"previous": state.value}),
    ]
    assert events[0].client_address == "testclient"

    # A queued job cannot be retried: 409 with the reason, recorded as a failed attempt.
    assert_refused(
        client,
        role_headers[Role.OPERATOR],
        "POST",
        f"{JOBS}/{first.job_id}/retry",
        409,
        f"job {first.job_id} is queued; only failed, not_analysed, cancelled ones can be retried",
    )
    assert [e.outcome for e in audit_events(sessions, "job.retry")] == ["ok", "ok", "failed"]
    assert queued_job_ids(app_settings) == [first.job_id, second.job_id]


@pytest.mark.parametrize(
    "state", [JobState.PENDING, JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]
)
def test_only_finished_jobs_can_be_retried(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    state: JobState,
) -> None:
    s = seed(sessions, job_state=state)
    response = client.post(f"{JOBS}/{s.job_id}/retry", headers=role_headers[Role.ADMIN])
    assert response.status_code == 409
    assert f"is {state.value}; only failed" in response.json()["detail"]
    assert job_row(sessions, s.job_id).state is state


def test_retry_with_the_broker_down_leaves_the_job_pending_for_the_dispatcher(
    tmp_path: Path,
    database_url: str,
    app_settings: Settings,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
) -> None:
    s = seed(sessions)
    down = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        broker_url=f"redis://127.0.0.1:{free_port()}/10",
    )
    with TestClient(create_app(down)) as client:
        response = client.post(f"{JOBS}/{s.job_id}/retry", headers=role_headers[Role.OPERATOR])
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["queued"] is False
    assert body["job"]["state"] == "pending"
    assert "broker could not be reached" in body["message"]
    assert "dispatcher queues it" in body["message"]
    assert [e.outcome for e in audit_events(sessions, "job.retry")] == ["ok"]

    # The node's dispatcher finds the pending job and queues it once a broker answers.
    with sessions() as session:
        assert requeue_candidates(session=session, stale_before=utcnow()) == [s.job_id]
    producer = TaskProducer(app_settings)
    try:
        assembler = Assembler(sessions, producer, quiet_seconds=5, requeue_after_s=300)
        assert assembler.dispatch() == 1
    finally:
        producer.close()
    assert job_row(sessions, s.job_id).state is JobState.QUEUED
    assert queued_job_ids(app_settings) == [s.job_id]


def test_cancel_stops_a_job_before_a_worker_claims_it(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
) -> None:
    pending = seed(sessions, 1, job_state=JobState.PENDING)
    queued = seed(sessions, 2, job_state=JobState.QUEUED)
    for role, s in ((Role.OPERATOR, pending), (Role.ADMIN, queued)):
        response = client.post(f"{JOBS}/{s.job_id}/cancel", headers=role_headers[role])
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "cancelled"
        assert response.json()["reason"] == f"cancelled by user:{role.value}"
    # The worker's conditional claim refuses it, and the dispatcher does not queue it again.
    with transaction(sessions) as session:
        assert claim_job(session=session, job_id=pending.job_id) is False
        assert claim_job(session=session, job_id=queued.job_id) is False
        assert requeue_candidates(session=session, stale_before=utcnow()) == []
    assert job_row(sessions, queued.job_id).state is JobState.CANCELLED
    events = audit_events(sessions, "job.cancel")
    assert [(e.actor, e.detail) for e in events] == [
        ("user:operator", {"previous": "pending"}),
        ("user:admin", {"previous": "queued"}),
    ]


@pytest.mark.parametrize(
    ("state", "detail"),
    [
        (JobState.RUNNING, "is running on a worker and cannot be stopped there"),
        (JobState.SUCCEEDED, "is succeeded; only pending, queued ones can be cancelled"),
        (JobState.CANCELLED, "is cancelled; only pending, queued ones can be cancelled"),
    ],
)
def test_cancel_refuses_a_running_or_finished_job(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    state: JobState,
    detail: str,
) -> None:
    s = seed(sessions, job_state=state)
    response = client.post(f"{JOBS}/{s.job_id}/cancel", headers=role_headers[Role.OPERATOR])
    assert response.status_code == 409
    assert detail in response.json()["detail"]
    assert job_row(sessions, s.job_id).state is state
    (event,) = audit_events(sessions, "job.cancel")
    assert event.outcome == "failed"
    assert detail in event.detail["reason"]


def test_reprocess_makes_a_new_job_per_model_version_and_never_a_duplicate(
    client: TestClient,
    app_settings: Settings,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    installed: list[str],
) -> None:
    old, new = installed
    s = seed(sessions)  # a failed job that ran `old`
    operator = role_headers[Role.OPERATOR]

    response = client.post(
        f"{JOBS}/{s.job_id}/reprocess", json={"model_version": new}, headers=operator
    )
    assert response.status_code == 202, response.text
    body = response.json()
    created = body["job"]
    assert created["id"] != s.job_id
    assert (created["state"], created["model_version"], body["queued"]) == ("queued", new, True)
    assert body["message"] == (
        f"job {created['id']} reprocesses job {s.job_id} with tiny-test-classifier {new} and queued"
    )
    source, reprocessed = job_row(sessions, s.job_id), job_row(sessions, created["id"])
    assert (reprocessed.study_id, reprocessed.route_id) == (source.study_id, source.route_id)
    assert reprocessed.input_sop_instance_uids == source.input_sop_instance_uids
    assert reprocessed.input_hash == reprocess_input_hash(source.input_sop_instance_uids, new)
    assert source.state is JobState.FAILED  # the old job and its results stay as they were

    # The same version again while that job waits: refused, not duplicated.
    again = client.post(
        f"{JOBS}/{s.job_id}/reprocess", json={"model_version": new}, headers=operator
    )
    assert again.status_code == 409
    assert f"job {created['id']} already runs tiny-test-classifier {new}" in again.json()["detail"]

    # The version the job already ran: that job is run again (its result UIDs are kept).
    admin = role_headers[Role.ADMIN]
    rerun = client.post(f"{JOBS}/{s.job_id}/reprocess", json={"model_version": old}, headers=admin)
    assert rerun.status_code == 202, rerun.text
    assert (rerun.json()["job"]["id"], rerun.json()["job"]["state"]) == (s.job_id, "queued")
    assert queued_job_ids(app_settings) == sorted([created["id"], s.job_id])

    events = audit_events(sessions, "job.reprocess")
    assert [(e.actor, e.outcome, e.detail.get("new_job")) for e in events] == [
        ("user:operator", "ok", True),
        ("user:operator", "failed", None),
        ("user:admin", "ok", False),
    ]
    assert events[0].detail == {"model_version": new, "job_id": created["id"], "new_job": True}


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model_version": "9.9.9"}, "tiny-test-classifier 9.9.9 is not installed"),
        ({"model_version": "../../etc"}, "String should match pattern"),
        ({"model_version": ".hidden"}, "invalid model version '.hidden'"),
        ({"model_version": "' OR 1=1 --"}, "String should match pattern"),
        ({"model_version": ""}, "at least 1 character"),
        ({}, "Field required"),
        ({"model_version": 7}, "valid string"),
    ],
)
def test_reprocess_needs_an_installed_version(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    body: dict[str, object],
    message: str,
) -> None:
    s = seed(sessions)
    response = client.post(
        f"{JOBS}/{s.job_id}/reprocess", json=body, headers=role_headers[Role.OPERATOR]
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][-1] == "model_version"
    assert message in error["msg"]
    with sessions() as session:
        assert session.query(Job).count() == 1


@pytest.mark.parametrize(
    ("method", "path", "status", "detail"),
    [
        ("POST", f"{JOBS}/0/retry", 422, None),
        ("POST", f"{JOBS}/-1/cancel", 422, None),
        ("POST", f"{JOBS}/abc/retry", 422, None),
        ("POST", f"{JOBS}/99999999999999999999999/cancel", 422, None),
        ("POST", f"{JOBS}/424242/retry", 404, "no job 424242"),
        ("POST", f"{JOBS}/424242/cancel", 404, "no job 424242"),
        ("GET", f"{JOBS}/424242", 404, "no job 424242"),
        ("GET", f"{JOBS}?study_instance_uid=1.2.x", 422, None),
        ("GET", f"{JOBS}?state=exploded", 422, None),
        ("GET", f"{JOBS}?model_name=" + "m" * 65, 422, None),
        ("GET", f"{JOBS}/1/retry", 405, None),
    ],
)
def test_hostile_job_requests_get_a_4xx_with_a_message(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    method: str,
    path: str,
    status: int,
    detail: str | None,
) -> None:
    s = seed(sessions)
    assert_refused(client, role_headers[Role.ADMIN], method, path, status, detail)
    assert job_row(sessions, s.job_id).state is JobState.FAILED


def test_a_reprocess_key_taken_meanwhile_is_a_409_not_a_server_error(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    installed: list[str],
) -> None:
    """What a concurrent request leaves behind: a row holding the reprocess key that the lookup
    does not match (here its version was never recorded). The unique key refuses the insert."""
    new = installed[1]
    s = seed(sessions)
    with transaction(sessions) as session:
        source = session.get(Job, s.job_id)
        assert source is not None
        session.add(
            Job(
                study_id=source.study_id,
                route_id=source.route_id,
                input_hash=reprocess_input_hash(source.input_sop_instance_uids, new),
                input_sop_instance_uids=source.input_sop_instance_uids,
                model_name=source.model_name,
                model_version=None,
            )
        )
    response = client.post(
        f"{JOBS}/{s.job_id}/reprocess",
        json={"model_version": new},
        headers=role_headers[Role.OPERATOR],
    )
    assert response.status_code == 409, response.text
    assert response.json()["detail"] == (
        f"another request created the {new} job for job {s.job_id} just now"
    )
    (event,) = audit_events(sessions, "job.reprocess")
    assert event.outcome == "failed"
