"""Stats over the API on SQLite and PostgreSQL, from rows with known times: studies per hour, stage
latency percentiles, failure rates and counts by state."""

from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db.models import Delivery, DeliveryState, Job, JobState, Role, Study, utcnow
from db.session import transaction
from tests.services.seed import Seeded, assert_read_by, assert_refused, seed

STATS = "/api/v1/stats"


def place(
    sessions: sessionmaker[Session],
    s: Seeded,
    *,
    hours_ago: float,
    ready_s: float,
    wait_s: float,
    run_s: float,
    send_s: float | None,
) -> None:
    """Put study ``s`` and its job and delivery at known times: arrived ``hours_ago``, then each
    stage took the given seconds."""
    arrived = utcnow() - timedelta(hours=hours_ago)
    ready = arrived + timedelta(seconds=ready_s)
    queued = ready + timedelta(seconds=1)
    started = queued + timedelta(seconds=wait_s)
    finished = started + timedelta(seconds=run_s)
    with transaction(sessions) as session:
        session.execute(
            update(Study)
            .where(Study.id == s.study_id)
            .values(first_received_at=arrived, last_received_at=arrived, completed_at=ready)
        )
        session.execute(
            update(Job)
            .where(Job.id == s.job_id)
            .values(queued_at=queued, started_at=started, finished_at=finished)
        )
        if send_s is not None:
            sent = finished + timedelta(seconds=send_s)
            session.execute(
                update(Delivery)
                .where(Delivery.id == s.delivery_id)
                .values(sent_at=sent, updated_at=sent)
            )
        else:
            session.execute(
                update(Delivery).where(Delivery.id == s.delivery_id).values(updated_at=finished)
            )


def percentiles(values: list[float]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50_s": round(p50, 3), "p90_s": round(p90, 3), "p99_s": round(p99, 3)}


def test_stats_need_a_viewer(client: TestClient, role_headers: dict[Role, dict[str, str]]) -> None:
    assert_read_by(client, role_headers, Role.VIEWER, STATS, f"{STATS}?hours=168")


def test_empty_database_gives_zeros_and_nulls(client: TestClient, viewer: dict[str, str]) -> None:
    stats = client.get(STATS, params={"hours": 3}, headers=viewer).json()
    assert stats["window_hours"] == 3
    assert [h["studies"] for h in stats["studies_per_hour"]] == [0, 0, 0]
    assert set(stats["latency"]) == {
        "receive_to_ready",
        "queued_to_started",
        "inference",
        "finished_to_delivered",
    }
    for stage in stats["latency"].values():
        assert stage == {
            "count": 0,
            "truncated": False,
            "p50_s": None,
            "p90_s": None,
            "p99_s": None,
        }
    assert stats["failure_rates"] == {
        "jobs": {"failed": 0, "finished": 0, "rate": None},
        "deliveries": {"failed": 0, "finished": 0, "rate": None},
    }
    assert stats["counts"] == {"studies": {}, "jobs": {}, "deliveries": {}}


def test_throughput_latencies_and_failure_rates_from_known_times(
    client: TestClient, sessions: sessionmaker[Session], viewer: dict[str, str]
) -> None:
    rows = [
        # (hours ago, job state, delivery state, ready, wait, run, send seconds)
        (0.0, JobState.SUCCEEDED, DeliveryState.SENT, 5.0, 1.0, 10.0, 2.0),
        (2.2, JobState.SUCCEEDED, DeliveryState.SENT, 6.0, 2.0, 12.0, 3.0),
        (2.3, JobState.FAILED, DeliveryState.FAILED, 7.0, 3.0, 14.0, None),
        (2.4, JobState.NOT_ANALYSED, DeliveryState.SENT, 8.0, 4.0, 16.0, 5.0),
        (30.0, JobState.FAILED, DeliveryState.FAILED, 100.0, 100.0, 100.0, None),  # outside 24h
    ]
    for n, (hours_ago, job_state, delivery_state, ready, wait, run, send) in enumerate(rows, 1):
        s = seed(sessions, n, job_state=job_state, delivery_state=delivery_state)
        place(sessions, s, hours_ago=hours_ago, ready_s=ready, wait_s=wait, run_s=run, send_s=send)
    pending = seed(sessions, 9, job_state=JobState.PENDING, delivery_state=DeliveryState.PENDING)
    assert pending.job_id

    stats = client.get(STATS, params={"hours": 24}, headers=viewer).json()
    per_hour = [h["studies"] for h in stats["studies_per_hour"]]
    assert len(per_hour) == 24
    # The pending study and the first arrived just now (this clock hour, or the one before if the
    # hour turned meanwhile); three between 2.2 and 2.4 hours ago (two to four hours back).
    assert sum(per_hour[-2:]) == 2
    assert sum(per_hour[-5:-2]) == 3
    assert sum(per_hour) == 5
    hours = [h["hour_start"] for h in stats["studies_per_hour"]]
    assert hours == sorted(hours)
    assert hours[-1].endswith(":00:00Z")

    expected = {
        "receive_to_ready": [5.0, 6.0, 7.0, 8.0],
        "queued_to_started": [1.0, 2.0, 3.0, 4.0],
        "inference": [10.0, 12.0, 14.0, 16.0],
        "finished_to_delivered": [2.0, 3.0, 5.0],
    }
    assert stats["latency"] == {
        stage: {"count": len(values), "truncated": False, **percentiles(values)}
        for stage, values in expected.items()
    }
    assert stats["latency"]["receive_to_ready"]["p50_s"] == 6.5  # linear, between 6 and 7
    assert stats["latency"]["finished_to_delivered"]["p90_s"] == 4.6  # 3 + 0.8 * (5 - 3)
    assert stats["failure_rates"] == {
        "jobs": {"failed": 1, "finished": 4, "rate": 0.25},
        "deliveries": {"failed": 1, "finished": 4, "rate": 0.25},
    }
    assert stats["counts"] == {
        "studies": {"receiving": 6},
        "jobs": {"succeeded": 2, "failed": 2, "not_analysed": 1, "pending": 1},
        "deliveries": {"sent": 3, "failed": 2, "pending": 1},
    }

    # A two-day window takes the old study in.
    wide = client.get(STATS, params={"hours": 48}, headers=viewer).json()
    assert sum(h["studies"] for h in wide["studies_per_hour"]) == 6
    assert wide["failure_rates"]["jobs"] == {"failed": 2, "finished": 5, "rate": 0.4}
    assert wide["latency"]["inference"]["p99_s"] == percentiles([10, 12, 14, 16, 100])["p99_s"]


@pytest.mark.parametrize("query", ["hours=0", "hours=169", "hours=-1", "hours=x", "hours=1e9"])
def test_the_window_is_bounded(client: TestClient, viewer: dict[str, str], query: str) -> None:
    assert_refused(client, viewer, "GET", f"{STATS}?{query}", 422)
