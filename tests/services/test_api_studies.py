"""Studies over the API on SQLite and PostgreSQL: filters, the detail with instances, jobs, results,
deliveries and per-stage timings, hostile input, and an audit row for every read."""

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db.models import Delivery, Job, Role, Study, StudyState
from db.session import transaction
from tests.services.seed import (
    ROOT,
    assert_read_by,
    assert_refused,
    audit_events,
    seed,
)

STUDIES = "/api/v1/studies"
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def set_study(sessions: sessionmaker[Session], study_id: int, **values: object) -> None:
    with transaction(sessions) as session:
        session.execute(update(Study).where(Study.id == study_id).values(**values))


def test_study_routes_admit_roles(
    client: TestClient, sessions: sessionmaker[Session], role_headers: dict[Role, dict[str, str]]
) -> None:
    s = seed(sessions)
    assert_read_by(client, role_headers, Role.VIEWER, STUDIES, f"{STUDIES}/{s.study_uid}")


def test_studies_are_filtered_by_time_state_ae_and_modality(
    client: TestClient, sessions: sessionmaker[Session], viewer: dict[str, str]
) -> None:
    early = seed(sessions, 1, modality="CR")
    late = seed(sessions, 2)
    set_study(sessions, early.study_id, first_received_at=T0, calling_ae="MODALITY")
    set_study(
        sessions,
        late.study_id,
        first_received_at=T0 + timedelta(hours=2),
        state=StudyState.COMPLETE,
        called_ae="OTHER",
    )

    def uids(**params: str) -> list[str]:
        response = client.get(STUDIES, params=params, headers=viewer)
        assert response.status_code == 200, response.text
        return [s["study_instance_uid"] for s in response.json()["items"]]

    assert uids() == [late.study_uid, early.study_uid]
    assert uids(received_from="2025-03-01T09:00:00Z") == [late.study_uid]
    assert uids(received_to="2025-03-01T09:00:00Z") == [early.study_uid]
    # 10:00 at +02:00 is 08:00 UTC: the early study is at the boundary (from is inclusive).
    assert uids(received_from="2025-03-01T10:00:00+02:00", received_to="2025-03-01T08:00:01Z") == [
        early.study_uid
    ]
    assert uids(state="complete") == [late.study_uid]
    assert uids(state="receiving") == [early.study_uid]
    assert uids(calling_ae="MODALITY") == [early.study_uid]
    assert uids(called_ae="OTHER") == [late.study_uid]
    assert uids(modality="CR") == [early.study_uid]
    assert uids(modality="dx") == [late.study_uid]
    assert uids(modality="MR") == []
    page = client.get(STUDIES, params={"limit": 1, "offset": 1}, headers=viewer).json()
    assert (page["total"], page["limit"], page["offset"]) == (2, 1, 1)
    assert [s["study_instance_uid"] for s in page["items"]] == [early.study_uid]

    events = audit_events(sessions, "study.list")
    assert len(events) == 12
    assert events[1].detail == {
        "count": 1,
        "offset": 0,
        "filters": {"received_from": "2025-03-01T09:00:00+00:00"},
    }
    assert events[-1].detail == {"count": 1, "offset": 1, "filters": {}}


def test_study_detail_has_instances_jobs_results_deliveries_and_timings(
    client: TestClient, sessions: sessionmaker[Session], viewer: dict[str, str]
) -> None:
    s = seed(sessions)
    set_study(
        sessions,
        s.study_id,
        first_received_at=T0,
        last_received_at=T0 + timedelta(seconds=4),
        completed_at=T0 + timedelta(seconds=9.5),
        state=StudyState.COMPLETE,
    )
    with transaction(sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == s.job_id)
            .values(
                created_at=T0 + timedelta(seconds=9.5),
                queued_at=T0 + timedelta(seconds=10),
                started_at=T0 + timedelta(seconds=12),
                finished_at=T0 + timedelta(seconds=20.25),
            )
        )
        session.execute(
            update(Delivery)
            .where(Delivery.id == s.delivery_id)
            .values(sent_at=T0 + timedelta(seconds=21))
        )

    response = client.get(f"{STUDIES}/{s.study_uid}", headers=viewer)
    assert response.status_code == 200, response.text
    study = response.json()
    assert "patient" not in response.text.lower()
    assert (study["state"], study["instance_count"], study["calling_ae"]) == ("complete", 1, "PACS")
    (series,) = study["series"]
    assert (series["series_instance_uid"], series["modality"], series["body_part_examined"]) == (
        f"{ROOT}.1.1",
        "DX",
        "CHEST",
    )
    (instance,) = series["instances"]
    assert instance == {
        "sop_instance_uid": f"{ROOT}.1.1.1",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "view_position": "PA",
        "size_bytes": 1001,
        "received_count": 1,
        "received_at": instance["received_at"],
    }
    (job,) = study["jobs"]
    assert (job["id"], job["state"], job["reason"]) == (s.job_id, "failed", "model failed: test")
    (result,) = job["results"]
    assert result["id"] == s.result_id
    assert [d["id"] for d in result["deliveries"]] == [s.delivery_id]

    timings = study["timings"]
    assert (timings["receiving_s"], timings["receive_to_ready_s"]) == (4.0, 9.5)
    assert timings["jobs"] == [
        {
            "job_id": s.job_id,
            "created_at": "2025-03-01T08:00:09.500000Z",
            "queued_at": "2025-03-01T08:00:10Z",
            "started_at": "2025-03-01T08:00:12Z",
            "finished_at": "2025-03-01T08:00:20.250000Z",
            "created_to_queued_s": 0.5,
            "queued_to_started_s": 2.0,
            "started_to_finished_s": 8.25,
            "stage_ms": None,  # a seeded job no worker ran
        }
    ]
    assert timings["deliveries"] == [
        {
            "delivery_id": s.delivery_id,
            "job_id": s.job_id,
            "destination_id": s.destination_id,
            "sent_at": "2025-03-01T08:00:21Z",
            "finished_to_sent_s": 0.75,
        }
    ]
    (event,) = audit_events(sessions, "study.read")
    assert (event.actor, event.target_type, event.target_id) == (
        "user:viewer",
        "study",
        s.study_uid,
    )


def test_a_study_still_receiving_has_open_timings(
    client: TestClient, sessions: sessionmaker[Session], viewer: dict[str, str]
) -> None:
    s = seed(sessions)
    timings = client.get(f"{STUDIES}/{s.study_uid}", headers=viewer).json()["timings"]
    assert timings["completed_at"] is None
    assert timings["receive_to_ready_s"] is None
    assert timings["jobs"][0]["queued_to_started_s"] is None


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        (f"{STUDIES}/1.2.3.999", 404, "no study 1.2.3.999"),
        (f"{STUDIES}/1.2.abc", 422, None),
        (f"{STUDIES}/1..2", 422, None),
        (f"{STUDIES}/' OR 1=1 --", 422, None),
        (f"{STUDIES}/" + "1." * 40 + "1", 422, None),
        (f"{STUDIES}?received_from=2025-03-01T08:00:00", 422, None),
        (f"{STUDIES}?received_from=yesterday", 422, None),
        # pydantic alone reads numbers as Unix time; the schema says ISO 8601 (found by fuzzing)
        (f"{STUDIES}?received_to=1.1326713901262501e-61", 422, None),
        (f"{STUDIES}?received_from=1733500000", 422, None),
        (f"{STUDIES}?received_to=9999-12-31T23:59:59-05:00", 422, None),
        (f"{STUDIES}?received_from=0001-01-01T00:00:00%2B05:00", 422, None),
        (f"{STUDIES}?calling_ae=", 422, None),
        (f"{STUDIES}?calling_ae=" + "A" * 17, 422, None),
        (f"{STUDIES}?modality=" + "M" * 17, 422, None),
        (f"{STUDIES}?state=exploded", 422, None),
    ],
)
def test_hostile_study_requests_get_a_4xx_with_a_message(
    client: TestClient,
    sessions: sessionmaker[Session],
    viewer: dict[str, str],
    path: str,
    status: int,
    detail: str | None,
) -> None:
    seed(sessions)
    assert_refused(client, viewer, "GET", path, status, detail)
    assert audit_events(sessions, "study.read") == []


def test_times_out_of_range_in_utc_are_named(client: TestClient, viewer: dict[str, str]) -> None:
    response = client.get(
        STUDIES, params={"received_to": "9999-12-31T23:59:59-05:00"}, headers=viewer
    )
    assert response.status_code == 422
    assert "out of range once converted to UTC" in response.json()["detail"][0]["msg"]


def test_a_number_for_a_time_is_refused_with_the_format_named(
    client: TestClient, viewer: dict[str, str]
) -> None:
    response = client.get(STUDIES, params={"received_from": "1733500000"}, headers=viewer)
    assert response.status_code == 422
    assert "ISO 8601" in response.text
