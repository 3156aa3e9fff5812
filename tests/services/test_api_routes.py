"""Routes over real databases with real models in the registry: CRUD with every matcher, model
activation and per-site thresholds checked against the cards, roles, audit, hostile input, and a
route change picked up by a running assembler without a restart."""

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.config import upsert_destination
from db.ingest import record_instance
from db.jobs import create_job_if_new
from db.models import AuditEvent, Job, JobState, Result, ResultKind, Role, Route, StudyState
from db.session import transaction
from dicom_node.assembly import Assembler
from models.export import BuiltModel
from radlight.queue import TaskProducer
from radlight.settings import Settings
from tests.dicom_node.test_assembly import make_quiet, study
from tests.dicom_node.test_routing_rules import receive
from tests.services.installed_models import TINY, install
from tests.services.installed_models import tiny_builds as tiny_builds  # a fixture
from tests.services.roles import assert_roles
from tests.services.test_api import RECEIVED
from tests.workers.conftest import copy_with_new_uids
from tests.workers.conftest import receive as receive_in_store
from workers.context import build_context
from workers.pipeline import run_job

ROUTES = "/api/v1/routes"
OLD, NEW = "0.0.0-seed0", "0.0.0-seed1"
MINIMAL = {"name": "chest", "model_name": TINY}
FULL = {
    "name": "adult-chest",
    "enabled": True,
    "priority": 10,
    "called_ae": "RADLIGHT",
    "calling_ae": "MODALITY1",
    "modalities": ["dx", " CR "],
    "sop_class_uids": ["1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.7"],
    "body_parts": ["chest", "PORT CHEST"],
    "view_positions": ["PA", "AP"],
    "min_age_years": 18,
    "max_age_years": 120,
    "pipeline": "chest-classifier",
    "model_name": TINY,
    "model_version": OLD,
    "destinations": ["pacs-a"],
    "produce_seg": True,
    "produce_gsps": True,
    "quiet_seconds": 12.5,
    "expected_instances": 2,
    "thresholds": {"Pneumothorax": 0.35, "Effusion": 0.6},
}


@pytest.fixture
def models(app_settings: Settings, tiny_builds: list[BuiltModel]) -> None:
    install(app_settings, tiny_builds)


@pytest.fixture
def destinations(sessions: sessionmaker[Session]) -> dict[str, int]:
    with transaction(sessions) as session:
        return {
            name: upsert_destination(
                session=session, name=name, host="127.0.0.1", port=104, ae_title=name.upper()
            ).id
            for name in ("pacs-a", "pacs-b")
        }


def route_events(sessions: sessionmaker[Session]) -> list[AuditEvent]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action.startswith("route."))
                .order_by(AuditEvent.id)
            )
        )


@pytest.mark.usefixtures("models")
def test_admin_manages_a_route_with_every_matcher(
    client: TestClient,
    sessions: sessionmaker[Session],
    admin: dict[str, str],
    destinations: dict[str, int],
) -> None:
    created = client.post(ROUTES, json=FULL, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body == {
        **FULL,
        "id": body["id"],
        "modalities": ["DX", "CR"],
        "body_parts": ["CHEST", "PORT CHEST"],
        "destinations": [{"id": destinations["pacs-a"], "name": "pacs-a", "enabled": True}],
    }
    url = f"{ROUTES}/{body['id']}"
    assert client.get(url, headers=admin).json() == body
    with sessions() as session:
        row = session.get(Route, body["id"])
        assert row is not None
        assert (row.modalities, row.body_parts, row.view_positions) == (
            "DX,CR",
            "CHEST,PORT CHEST",
            "PA,AP",
        )
        assert row.thresholds == {"Pneumothorax": 0.35, "Effusion": 0.6}

    # PATCH: destinations by id, clear a matcher, follow the latest version.
    patched = client.patch(
        url,
        json={"destinations": [destinations["pacs-b"]], "calling_ae": None, "model_version": None},
        headers=admin,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json() == {
        **body,
        "destinations": [{"id": destinations["pacs-b"], "name": "pacs-b", "enabled": True}],
        "calling_ae": None,
        "model_version": None,
    }

    # PUT replaces everything: omitted matchers are cleared.
    replaced = client.put(url, json={**MINIMAL, "name": "adult-chest"}, headers=admin)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["modalities"] == []
    assert replaced.json()["thresholds"] == {}
    assert replaced.json()["destinations"] == []
    assert replaced.json()["quiet_seconds"] is None

    assert [r["name"] for r in client.get(ROUTES, headers=admin).json()] == ["adult-chest"]
    assert client.delete(url, headers=admin).status_code == 204
    assert client.get(url, headers=admin).status_code == 404

    events = route_events(sessions)
    assert [e.action for e in events] == [
        "route.create",
        "route.update",
        "route.update",
        "route.delete",
    ]
    assert events[1].detail["changes"] == {
        "calling_ae": {"from": "MODALITY1", "to": None},
        "model_version": {"from": OLD, "to": None},
        "destinations": {"from": [destinations["pacs-a"]], "to": [destinations["pacs-b"]]},
    }
    assert events[3].detail["deleted"]["name"] == "adult-chest"


@pytest.mark.usefixtures("models")
def test_model_activation_and_thresholds_are_checked_against_the_registry(
    client: TestClient, sessions: sessionmaker[Session], admin: dict[str, str]
) -> None:
    route = client.post(ROUTES, json=MINIMAL, headers=admin).json()
    model_url, thresholds_url = (
        f"{ROUTES}/{route['id']}/model",
        f"{ROUTES}/{route['id']}/thresholds",
    )

    pinned = client.put(model_url, json={"model_name": TINY, "model_version": OLD}, headers=admin)
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["model_version"] == OLD
    latest = client.put(model_url, json={"model_name": TINY}, headers=admin)
    assert latest.json()["model_version"] is None

    missing = client.put(
        model_url, json={"model_name": TINY, "model_version": "9.9"}, headers=admin
    )
    assert missing.status_code == 422
    assert f"has no version '9.9'; installed: {OLD}, {NEW}" in missing.text
    unknown = client.put(model_url, json={"model_name": "chexnet-real"}, headers=admin)
    assert unknown.status_code == 422
    assert "no model named 'chexnet-real' is installed" in unknown.text

    ok = client.put(thresholds_url, json={"thresholds": {"Pneumonia": 0.2}}, headers=admin)
    assert ok.status_code == 200, ok.text
    assert ok.json()["thresholds"] == {"Pneumonia": 0.2}
    wrong = client.put(thresholds_url, json={"thresholds": {"Covid": 0.5}}, headers=admin)
    assert wrong.status_code == 422
    assert "reports no finding named Covid" in wrong.text
    assert "Pneumothorax" in wrong.text  # the message lists what it does report
    for value in (-0.1, 1.01, "high"):
        bad = client.put(thresholds_url, json={"thresholds": {"Pneumonia": value}}, headers=admin)
        assert bad.status_code == 422, bad.text
    cleared = client.put(thresholds_url, json={"thresholds": {}}, headers=admin)
    assert cleared.json()["thresholds"] == {}
    with sessions() as session:
        row = session.get(Route, route["id"])
        assert row is not None
        assert row.thresholds is None  # the card's thresholds apply again

    actions = [(e.action, e.outcome) for e in route_events(sessions)]
    assert actions == [
        ("route.create", "ok"),
        ("route.model", "ok"),
        ("route.model", "ok"),
        ("route.thresholds", "ok"),
        ("route.thresholds", "ok"),
    ]


@pytest.mark.usefixtures("models")
def test_every_endpoint_for_every_role(
    client: TestClient, role_headers: dict[Role, dict[str, str]], destinations: dict[str, int]
) -> None:
    admin = role_headers[Role.ADMIN]
    route_id = client.post(ROUTES, json=MINIMAL, headers=admin).json()["id"]
    one = f"{ROUTES}/{route_id}"
    checks: list[tuple[str, str, Role, int, Any]] = [
        ("GET", ROUTES, Role.OPERATOR, 200, None),
        ("GET", one, Role.OPERATOR, 200, None),
        ("POST", ROUTES, Role.ADMIN, 201, FULL),
        ("PUT", one, Role.ADMIN, 200, {**MINIMAL, "priority": 5}),
        ("PATCH", one, Role.ADMIN, 200, {"enabled": False}),
        ("PUT", f"{one}/model", Role.ADMIN, 200, {"model_name": TINY, "model_version": NEW}),
        ("PUT", f"{one}/thresholds", Role.ADMIN, 200, {"thresholds": {"Mass": 0.4}}),
        ("DELETE", one, Role.ADMIN, 204, None),
    ]
    for method, path, least, ok, json in checks:
        assert_roles(client, role_headers, method, path, least=least, ok=ok, json=json)


HOSTILE: list[tuple[dict[str, object], str]] = [
    ({"name": ""}, "at least 1 character"),
    ({"name": "a,b"}, "should match pattern"),
    ({"called_ae": "X" * 17}, "at most 16 characters"),
    ({"calling_ae": "BACK\\SLASH"}, "without backslash"),
    ({"modalities": ["D,X"]}, "should match pattern"),
    ({"modalities": ["DX"] * 33}, "at most 32 items"),
    ({"modalities": ["ABCDEFGHIJKLMNOP"] * 16}, "modalities is too long"),
    ({"sop_class_uids": ["1.2.abc"]}, "should match pattern"),
    ({"sop_class_uids": ["1.2," + "3"]}, "should match pattern"),
    ({"body_parts": ["CHEST;--"]}, "should match pattern"),
    ({"view_positions": [""]}, "at least 1 character"),
    ({"min_age_years": -1}, "greater than or equal to 0"),
    ({"max_age_years": 151}, "less than or equal to 150"),
    ({"min_age_years": 40, "max_age_years": 30}, "min_age_years must not exceed"),
    ({"pipeline": "brain-mri"}, "chest-classifier"),
    ({"model_name": "../../etc"}, "should match pattern"),
    ({"model_name": "..hidden"}, "invalid model name or version"),
    ({"model_version": "1.0/../x"}, "should match pattern"),
    ({"model_name": "not-installed"}, "no model named 'not-installed' is installed"),
    ({"destinations": ["nowhere", 4242]}, "unknown destination(s): nowhere, 4242"),
    ({"quiet_seconds": -1}, "greater than or equal to 0"),
    ({"quiet_seconds": 1e9}, "less than or equal to 86400"),
    ({"priority": 2**40}, "less than or equal to 1000000"),
    ({"thresholds": {"Hernia": 2}}, "less than or equal to 1"),
    ({"thresholds": {"": 0.5}}, "at least 1 character"),
    ({"produce_seg": "sometimes"}, "valid boolean"),
    ({"unknown_field": 1}, "Extra inputs are not permitted"),
]


@pytest.mark.usefixtures("models")
def test_hostile_bodies_get_422_with_a_message(client: TestClient, admin: dict[str, str]) -> None:
    """Every case through POST, PUT and PATCH (one database per backend for all of them)."""
    route_id = client.post(ROUTES, json=MINIMAL, headers=admin).json()["id"]
    for change, fragment in HOSTILE:
        for method, path, body in (
            ("POST", ROUTES, {**MINIMAL, "name": "other", **change}),
            ("PUT", f"{ROUTES}/{route_id}", {**MINIMAL, **change}),
            ("PATCH", f"{ROUTES}/{route_id}", change),
        ):
            response = client.request(method, path, json=body, headers=admin)
            assert response.status_code == 422, (change, method, response.text)
            assert fragment in response.text, (change, method, response.text)
    assert client.get(f"{ROUTES}/{route_id}", headers=admin).json()["name"] == "chest"


BAD_IDS: list[tuple[str, str, int]] = [
    ("GET", "/0", 422),
    ("GET", "/x", 422),
    ("GET", "/4242", 404),
    ("PATCH", "/4242", 404),
    ("DELETE", "/4242", 404),
    ("PUT", "/4242/model", 404),
    ("PUT", "/4242/thresholds", 404),
]


def test_bad_or_unknown_ids(client: TestClient, admin: dict[str, str]) -> None:
    for method, path, status in BAD_IDS:
        json = {"model_name": TINY, "thresholds": {}} if method in ("PUT", "PATCH") else None
        if path.endswith("/model"):
            json = {"model_name": TINY}
        elif path.endswith("/thresholds"):
            json = {"thresholds": {}}
        response = client.request(method, ROUTES + path, json=json, headers=admin)
        assert response.status_code == status, (method, path, response.text)
        assert response.json()["detail"]


@pytest.mark.usefixtures("models")
def test_names_are_unique_and_a_route_with_jobs_is_disabled_not_deleted(
    client: TestClient, sessions: sessionmaker[Session], admin: dict[str, str]
) -> None:
    route = client.post(ROUTES, json=MINIMAL, headers=admin).json()
    taken = client.post(ROUTES, json=MINIMAL, headers=admin)
    assert taken.status_code == 409
    assert "a route named 'chest' exists already" in taken.json()["detail"]

    with transaction(sessions) as session:
        outcome = record_instance(RECEIVED, session=session)
        row = session.get(Route, route["id"])
        assert row is not None
        create_job_if_new(
            session=session,
            study_id=outcome.study_id,
            route=row,
            sop_instance_uids=[RECEIVED.sop_instance_uid],
        )
    url = f"{ROUTES}/{route['id']}"
    refused = client.delete(url, headers=admin)
    assert refused.status_code == 409
    assert "has 1 jobs on record; disable it instead" in refused.json()["detail"]
    assert client.patch(url, json={"enabled": False}, headers=admin).json()["enabled"] is False


@pytest.mark.usefixtures("models")
def test_a_route_changed_through_the_api_applies_to_the_next_study(
    client: TestClient,
    sessions: sessionmaker[Session],
    admin: dict[str, str],
    tmp_path: Path,
) -> None:
    """One assembler, made once (as the running node's is), sees each change on its next pass."""
    producer = TaskProducer(Settings(data_dir=tmp_path / "queue-data"))
    node = Assembler(sessions, producer, quiet_seconds=5.0, requeue_after_s=300.0)
    try:
        route = client.post(ROUTES, json={**MINIMAL, "modalities": ["CR"]}, headers=admin).json()
        first = receive(sessions, generate_uid(), age=40)  # a DX study
        make_quiet(sessions, first, 10.0)
        assert node.assemble() == []
        assert study(sessions, first).state is StudyState.UNROUTED

        patch = {"modalities": ["DX"], "min_age_years": 18, "quiet_seconds": 60}
        assert client.patch(f"{ROUTES}/{route['id']}", json=patch, headers=admin).status_code == 200
        second = receive(sessions, generate_uid(), age=40)
        make_quiet(sessions, second, 10.0)
        assert node.assemble() == []  # matched now, but the route's own quiet period is longer
        assert study(sessions, second).state is StudyState.RECEIVING
        make_quiet(sessions, second, 61.0)
        assert len(node.assemble()) == 1
        with sessions() as session:
            job = session.scalars(select(Job)).one()
            assert (job.route_id, job.model_name) == (route["id"], TINY)
    finally:
        producer.close()


@pytest.mark.usefixtures("models")
def test_site_thresholds_set_through_the_api_decide_what_the_worker_calls_present(
    client: TestClient, app_settings: Settings, admin: dict[str, str], real_dicom_files: list[Path]
) -> None:
    """Thresholds just past each score flip every finding: present ones become absent and the
    others present, so the override (not the card's or the default threshold) decided."""
    ctx = build_context(app_settings)
    try:
        route = client.post(ROUTES, json={**MINIMAL, "model_version": OLD}, headers=admin).json()

        def present_after_run() -> tuple[dict[str, float], set[str]]:
            source = copy_with_new_uids(real_dicom_files[0])
            outcome = receive_in_store(ctx, source)
            with transaction(ctx.sessions) as session:
                row = session.get(Route, route["id"])
                assert row is not None
                job = create_job_if_new(
                    session=session,
                    study_id=outcome.study_id,
                    route=row,
                    sop_instance_uids=[str(source.SOPInstanceUID)],
                )
                assert job is not None
                job_id = job.id
            assert run_job(job_id, ctx) is JobState.SUCCEEDED
            with ctx.sessions() as session:
                report = session.scalars(
                    select(Result).where(
                        Result.job_id == job_id, Result.kind == ResultKind.FINDINGS_SR
                    )
                ).one()
            (scores,) = report.summary["findings"].values()
            (present,) = report.summary["present"].values()
            return scores, set(present)

        scores, before = present_after_run()
        flipped = {
            name: round(min(1.0, p + 0.01), 4) if name in before else round(max(0.0, p - 0.01), 4)
            for name, p in scores.items()
        }
        response = client.put(
            f"{ROUTES}/{route['id']}/thresholds", json={"thresholds": flipped}, headers=admin
        )
        assert response.status_code == 200, response.text

        same_scores, after = present_after_run()
        assert same_scores == scores  # the same pixels through the same model version
        assert after == set(scores) - before
    finally:
        ctx.producer.close()
        ctx.engine.dispose()
