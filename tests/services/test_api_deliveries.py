"""Deliveries and refused C-STOREs over the API on SQLite and PostgreSQL. Retries go to the real
Redis broker (database 10) and land on the delivery queue; with the broker down the delivery stays
pending, says why, and the node's dispatcher queues it later."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import record_ingest_failure
from db.models import Delivery, DeliveryState, Role, utcnow
from db.session import transaction
from dicom_node.assembly import Assembler
from radlight.contracts import QUEUE_DELIVERY, QUEUE_INFERENCE, TASK_DELIVER
from radlight.queue import TaskProducer
from radlight.settings import Settings
from services.app import create_app
from services.operations import AWAITING_BROKER
from tests.brokers import clean_redis, redis_lists
from tests.peers import free_port
from tests.services.seed import assert_read_by, assert_refused, assert_role_gate, audit_events, seed

DELIVERIES = "/api/v1/deliveries"
FAILURES = "/api/v1/ingest-failures"


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    with clean_redis(redis_url) as client:
        yield client


@pytest.fixture
def app_settings(tmp_path: Path, database_url: str, redis_url: str) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url, broker_url=redis_url)


@pytest.fixture
def client(app_settings: Settings, broker: redis.Redis) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as test_client:
        yield test_client


@pytest.fixture
def down_client(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    """The same app, with its broker on a port where nothing listens."""
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        broker_url=f"redis://127.0.0.1:{free_port()}/10",
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def delivery_queue(broker: redis.Redis) -> list[int]:
    """Delivery ids waiting on the delivery queue; nothing may have gone to inference."""
    lists = redis_lists(broker)
    assert QUEUE_INFERENCE not in lists
    messages = lists.get(QUEUE_DELIVERY, [])
    assert {(m.task, m.routing_key) for m in messages} <= {(TASK_DELIVER, QUEUE_DELIVERY)}
    return sorted(m.kwargs["delivery_id"] for m in messages)


def delivery_row(sessions: sessionmaker[Session], delivery_id: int) -> Delivery:
    with sessions() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        return delivery


def test_delivery_routes_admit_roles(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    broker: redis.Redis,
) -> None:
    s = seed(sessions)
    assert_read_by(client, role_headers, Role.VIEWER, DELIVERIES, FAILURES)
    for path in (f"{DELIVERIES}/{s.delivery_id}/retry", f"{DELIVERIES}/retry-failed"):
        assert_role_gate(client, role_headers, "POST", path, Role.OPERATOR)
    assert delivery_row(sessions, s.delivery_id).state is DeliveryState.FAILED
    assert delivery_queue(broker) == []


def test_deliveries_are_listed_with_their_job_and_filtered(
    client: TestClient, sessions: sessionmaker[Session], viewer: dict[str, str]
) -> None:
    failed = seed(sessions, 1)
    sent = seed(sessions, 2, delivery_state=DeliveryState.SENT, destination="archive")

    def ids(**params: str | int) -> list[int]:
        response = client.get(DELIVERIES, params=params, headers=viewer)
        assert response.status_code == 200, response.text
        return [d["id"] for d in response.json()["items"]]

    assert ids() == [sent.delivery_id, failed.delivery_id]
    assert ids(state="failed") == [failed.delivery_id]
    assert ids(destination_id=sent.destination_id) == [sent.delivery_id]
    assert ids(job_id=failed.job_id) == [failed.delivery_id]
    assert ids(job_id=failed.job_id, state="sent") == []
    row = client.get(DELIVERIES, params={"state": "failed"}, headers=viewer).json()["items"][0]
    assert row["job_id"] == failed.job_id
    assert row["result_id"] == failed.result_id
    assert row["destination_name"] == "pacs"
    assert (row["last_status"], row["reason"]) == (0xA700, "peer out of resources")


def test_operator_and_admin_retry_a_failed_delivery_onto_the_redis_queue(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    broker: redis.Redis,
) -> None:
    first, second = seed(sessions, 1), seed(sessions, 2)
    for role, s in ((Role.OPERATOR, first), (Role.ADMIN, second)):
        response = client.post(f"{DELIVERIES}/{s.delivery_id}/retry", headers=role_headers[role])
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["queued"] is True
        assert body["message"] == f"delivery {s.delivery_id} reset to pending and queued"
        assert body["delivery"]["state"] == "pending"
        delivery = delivery_row(sessions, s.delivery_id)
        assert (delivery.state, delivery.attempts, delivery.last_status, delivery.reason) == (
            DeliveryState.PENDING,
            0,
            None,
            None,
        )
    assert delivery_queue(broker) == [first.delivery_id, second.delivery_id]
    events = audit_events(sessions, "delivery.retry")
    assert [(e.actor, e.target_type, e.target_id, e.outcome) for e in events] == [
        ("user:operator", "delivery", str(first.delivery_id), "ok"),
        ("user:admin", "delivery", str(second.delivery_id), "ok"),
    ]

    # Pending now: a second retry is refused, recorded, and queues nothing more.
    assert_refused(
        client,
        role_headers[Role.OPERATOR],
        "POST",
        f"{DELIVERIES}/{first.delivery_id}/retry",
        409,
        f"delivery {first.delivery_id} is pending; only failed ones can be retried",
    )
    assert [e.outcome for e in audit_events(sessions, "delivery.retry")] == ["ok", "ok", "failed"]
    assert delivery_queue(broker) == [first.delivery_id, second.delivery_id]


@pytest.mark.parametrize(
    "state", [DeliveryState.SENT, DeliveryState.PENDING, DeliveryState.SENDING]
)
def test_only_failed_deliveries_are_retried(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    broker: redis.Redis,
    state: DeliveryState,
) -> None:
    s = seed(sessions, delivery_state=state)
    response = client.post(f"{DELIVERIES}/{s.delivery_id}/retry", headers=role_headers[Role.ADMIN])
    assert response.status_code == 409
    assert f"is {state.value}; only failed ones" in response.json()["detail"]
    assert delivery_row(sessions, s.delivery_id).state is state
    assert delivery_queue(broker) == []


def test_retry_with_the_broker_down_leaves_the_delivery_pending_for_the_dispatcher(
    down_client: TestClient,
    app_settings: Settings,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    broker: redis.Redis,
) -> None:
    s = seed(sessions)
    response = down_client.post(
        f"{DELIVERIES}/{s.delivery_id}/retry", headers=role_headers[Role.OPERATOR]
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["queued"] is False
    assert "the broker could not be reached" in body["message"]
    assert "dispatcher queues it" in body["message"]
    assert body["delivery"]["state"] == "pending"
    assert body["delivery"]["reason"] == AWAITING_BROKER
    delivery = delivery_row(sessions, s.delivery_id)
    assert (delivery.state, delivery.attempts, delivery.reason) == (
        DeliveryState.PENDING,
        0,
        AWAITING_BROKER,
    )
    assert [e.outcome for e in audit_events(sessions, "delivery.retry")] == ["ok"]

    # A minute later the node's dispatcher, on a broker that answers, queues it.
    with transaction(sessions) as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id == s.delivery_id)
            .values(updated_at=utcnow() - timedelta(minutes=2))
        )
    producer = TaskProducer(app_settings)
    try:
        assembler = Assembler(sessions, producer, quiet_seconds=5, requeue_after_s=300)
        assert assembler.dispatch_deliveries() == 1
    finally:
        producer.close()
    assert delivery_queue(broker) == [s.delivery_id]


def test_retry_failed_reopens_every_failed_delivery_or_one_destinations(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    broker: redis.Redis,
) -> None:
    a1, a2 = seed(sessions, 1, destination="archive"), seed(sessions, 2, destination="archive")
    p1 = seed(sessions, 3)
    sent = seed(sessions, 4, delivery_state=DeliveryState.SENT)

    one = client.post(
        f"{DELIVERIES}/retry-failed",
        params={"destination_id": a1.destination_id},
        headers=role_headers[Role.OPERATOR],
    )
    assert one.status_code == 202, one.text
    assert one.json() == {
        "delivery_ids": [a1.delivery_id, a2.delivery_id],
        "queued": 2,
        "message": "2 failed deliveries reset to pending; 2 queued",
    }
    assert delivery_queue(broker) == [a1.delivery_id, a2.delivery_id]
    assert delivery_row(sessions, p1.delivery_id).state is DeliveryState.FAILED

    rest = client.post(f"{DELIVERIES}/retry-failed", headers=role_headers[Role.ADMIN])
    assert rest.status_code == 202
    assert rest.json()["delivery_ids"] == [p1.delivery_id]
    assert delivery_queue(broker) == [a1.delivery_id, a2.delivery_id, p1.delivery_id]
    assert delivery_row(sessions, sent.delivery_id).state is DeliveryState.SENT

    nothing = client.post(f"{DELIVERIES}/retry-failed", headers=role_headers[Role.ADMIN])
    assert nothing.json()["delivery_ids"] == []

    events = audit_events(sessions, "delivery.retry_failed")
    assert [(e.actor, e.target_type, e.target_id, e.detail) for e in events] == [
        (
            "user:operator",
            "destination",
            str(a1.destination_id),
            {"count": 2, "delivery_ids": [a1.delivery_id, a2.delivery_id]},
        ),
        ("user:admin", None, None, {"count": 1, "delivery_ids": [p1.delivery_id]}),
        ("user:admin", None, None, {"count": 0, "delivery_ids": []}),
    ]


def test_retry_failed_with_the_broker_down_leaves_them_all_pending(
    down_client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
) -> None:
    ids = [seed(sessions, n).delivery_id for n in (1, 2, 3)]
    response = down_client.post(f"{DELIVERIES}/retry-failed", headers=role_headers[Role.OPERATOR])
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["delivery_ids"], body["queued"]) == (ids, 0)
    assert "3 wait for the broker, which could not be reached" in body["message"]
    for delivery_id in ids:
        delivery = delivery_row(sessions, delivery_id)
        assert (delivery.state, delivery.reason) == (DeliveryState.PENDING, AWAITING_BROKER)


@pytest.mark.parametrize(
    ("method", "path", "status", "detail"),
    [
        ("POST", f"{DELIVERIES}/0/retry", 422, None),
        ("POST", f"{DELIVERIES}/x/retry", 422, None),
        ("POST", f"{DELIVERIES}/99999999999999999999/retry", 422, None),
        ("POST", f"{DELIVERIES}/424242/retry", 404, "no delivery 424242"),
        ("POST", f"{DELIVERIES}/retry-failed?destination_id=424242", 404, "no destination 424242"),
        ("POST", f"{DELIVERIES}/retry-failed?destination_id=-3", 422, None),
        ("POST", f"{DELIVERIES}/retry-failed?destination_id=1;DROP", 422, None),
        ("GET", f"{DELIVERIES}?state=lost", 422, None),
        ("GET", f"{DELIVERIES}?job_id=0", 422, None),
        ("GET", f"{DELIVERIES}?limit=501", 422, None),
        ("GET", f"{FAILURES}?status=70000", 422, None),
        ("GET", f"{FAILURES}?received_from=yesterday", 422, None),
        ("GET", f"{FAILURES}?received_from=2025-01-01T00:00:00", 422, None),
        ("GET", f"{FAILURES}?calling_ae=" + "A" * 17, 422, None),
    ],
)
def test_hostile_delivery_requests_get_a_4xx_with_a_message(
    client: TestClient,
    sessions: sessionmaker[Session],
    role_headers: dict[Role, dict[str, str]],
    broker: redis.Redis,
    method: str,
    path: str,
    status: int,
    detail: str | None,
) -> None:
    s = seed(sessions)
    assert_refused(client, role_headers[Role.ADMIN], method, path, status, detail)
    assert delivery_row(sessions, s.delivery_id).state is DeliveryState.FAILED
    assert delivery_queue(broker) == []


def test_refused_c_stores_are_listed_newest_first_and_audited(
    client: TestClient, sessions: sessionmaker[Session], viewer: dict[str, str]
) -> None:
    with transaction(sessions) as session:
        truncated = record_ingest_failure(
            session=session,
            status=0xC210,
            reason="truncated: Pixel Data is shorter than its header says",
            calling_ae="MODALITY1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            sop_instance_uid="1.2.826.0.1.3680043.8.498.77",
            quarantine_path="quarantine/x.dcm",
        )
        too_big = record_ingest_failure(
            session=session,
            status=0xA701,
            reason="instance over the size limit",
            calling_ae="MODALITY2",
            sop_class_uid=None,
            sop_instance_uid=None,
            quarantine_path=None,
        )
    page = client.get(FAILURES, headers=viewer).json()
    assert page["total"] == 2
    assert [f["id"] for f in page["items"]] == [too_big, truncated]
    newest, oldest = page["items"]
    assert (newest["status"], newest["status_hex"], newest["quarantined"]) == (
        0xA701,
        "0xA701",
        False,
    )
    assert (oldest["calling_ae"], oldest["quarantined"]) == ("MODALITY1", True)
    assert oldest["reason"] == "truncated: Pixel Data is shorter than its header says"
    assert "quarantine_path" not in oldest
    only = client.get(FAILURES, params={"status": 0xC210}, headers=viewer).json()
    assert [f["id"] for f in only["items"]] == [truncated]
    by_ae = client.get(FAILURES, params={"calling_ae": "MODALITY2"}, headers=viewer).json()
    assert [f["id"] for f in by_ae["items"]] == [too_big]
    future = client.get(
        FAILURES, params={"received_from": "2999-01-01T00:00:00Z"}, headers=viewer
    ).json()
    assert future["total"] == 0
    events = audit_events(sessions, "ingest_failure.list")
    assert [(e.actor, e.detail["count"]) for e in events] == [
        ("user:viewer", 2),
        ("user:viewer", 1),
        ("user:viewer", 1),
        ("user:viewer", 0),
    ]
