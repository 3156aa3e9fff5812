"""A change of route through the API changes where the next study's results go, without a restart.

Real processes throughout: `radlight dicom-node`, `radlight worker` (on the real Redis, database
11) and `radlight api`, started once and never restarted; two real Orthancs as PACS A and B;
dcmtk's storescu as the modality. An admin (created with the CLI, signed in with the password
flow) configures everything over HTTP after the processes are up: the destinations (echo-tested),
then a route to A. The first study's results land at A. The admin repoints the route at B; the
second study's results land at B, and none at A. SQLite: this is about live configuration, not
the backend (the API tests run on both).
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from db.models import AuditEvent, Delivery, DeliveryState, Destination, Job, Result, Study
from db.session import make_engine
from tests.peers import (
    Orthanc,
    Service,
    create_user,
    echo_ok,
    free_port,
    node_env,
    radlight,
    radlight_service,
    require_tools,
    run_orthanc,
    storescu,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-test-classifier"
PASSWORD = "a long and private admin passphrase"


@dataclass
class Deployment:
    dicom_port: int
    api: httpx.Client
    engine: Engine
    pacs: dict[str, Orthanc]
    services: list[Service]

    def alive(self) -> None:
        for service in self.services:
            service.assert_alive()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.log()[-3000:]}" for s in self.services)


@pytest.fixture
def deployment(tmp_path: Path, redis_url: str) -> Iterator[Deployment]:
    require_tools()
    broker_url = redis_url
    dicom_port, api_port = free_port(), free_port()
    database_url = f"sqlite:///{tmp_path / 'radlight.db'}"
    env = node_env(
        tmp_path / "data", database_url=database_url, broker_url=broker_url, port=dicom_port
    )
    env |= {"RADLIGHT_API_HOST": "127.0.0.1", "RADLIGHT_API_PORT": str(api_port)}
    radlight(env, "db", "upgrade")
    radlight(env, "models", "build", "tiny")
    create_user(env, "admin", "admin", PASSWORD)
    with contextlib.ExitStack() as stack:
        pacs = {
            "pacs-a": stack.enter_context(run_orthanc(tmp_path / "pacs-a", "PACS_A")),
            "pacs-b": stack.enter_context(run_orthanc(tmp_path / "pacs-b", "PACS_B")),
        }
        services = [
            stack.enter_context(radlight_service(env, tmp_path, *args))
            for args in (("dicom-node",), ("worker", "--concurrency", "1"), ("api",))
        ]
        engine = make_engine(database_url)
        stack.callback(engine.dispose)
        api = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30))
        deployment = Deployment(dicom_port, api, engine, pacs, services)

        def up() -> bool:
            deployment.alive()
            try:
                return echo_ok(dicom_port) and api.get("/ready").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=90, what="node C-ECHO and API /ready")
        token = api.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
        assert token.status_code == 200, token.text
        api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield deployment


def _fresh_study(source: Path, target: Path) -> str:
    """A copy of a real chest X-ray as a new study (new UIDs); returns its Study Instance UID."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return str(ds.StudyInstanceUID)


def _held(orthanc: Orthanc, study_uid: str) -> int:
    """How many instances of ``study_uid`` the PACS holds."""
    for study in orthanc.get("/studies?expand"):
        if study["MainDicomTags"].get("StudyInstanceUID") == study_uid:
            return sum(len(orthanc.get(f"/series/{s}")["Instances"]) for s in study["Series"])
    return 0


def _deliveries(engine: Engine, study_uid: str) -> list[tuple[str, DeliveryState]]:
    """(destination name, state) of every delivery of the study's results."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Destination.name, Delivery.state)
            .join(Delivery, Delivery.destination_id == Destination.id)
            .join(Result, Delivery.result_id == Result.id)
            .join(Job, Result.job_id == Job.id)
            .join(Study, Job.study_id == Study.id)
            .where(Study.study_instance_uid == study_uid)
        ).all()
    return [(row.name, row.state) for row in rows]


def _send_and_wait(deployment: Deployment, path: Path, study_uid: str, pacs: str) -> int:
    """Send the study, wait until all its results are sent and held by ``pacs``; how many."""
    sent = storescu(deployment.dicom_port, path, calling_ae="MODALITY1")
    assert sent.returncode == 0, sent.stdout + sent.stderr

    def arrived() -> int:
        deployment.alive()
        deliveries = _deliveries(deployment.engine, study_uid)
        wrong = {name for name, _ in deliveries} - {pacs}
        assert not wrong, f"results of {study_uid} went to {wrong}, not {pacs}"
        if not deliveries or any(state != DeliveryState.SENT for _, state in deliveries):
            return 0
        held = _held(deployment.pacs[pacs], study_uid)
        return held if held == len(deliveries) else 0

    try:
        count: int = wait_for(arrived, timeout=180, what=f"results of {study_uid} at {pacs}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{deployment.logs()}") from exc
    return count


def _api(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def test_a_route_change_sends_the_next_study_elsewhere_without_a_restart(
    deployment: Deployment, real_dicom_files: list[Path], tmp_path: Path
) -> None:
    api = deployment.api
    pids = [s.process.pid for s in deployment.services]

    # Configure the running deployment through the API: two destinations, echo-tested.
    ids = {}
    for name, orthanc in deployment.pacs.items():
        body = {
            "name": name,
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "ae_title": orthanc.ae_title,
        }
        ids[name] = _api(api.post("/api/v1/destinations", json=body), 201)["id"]
        echo = _api(api.post(f"/api/v1/destinations/{ids[name]}/echo"))
        assert echo["ok"] is True, echo
    route = _api(
        api.post(
            "/api/v1/routes",
            json={
                "name": "adult-chest",
                "model_name": MODEL,
                "modalities": ["DX", "CR"],
                "min_age_years": 18,  # the NIH patients are 58 and 81 (PatientAge)
                "destinations": ["pacs-a"],
            },
        ),
        201,
    )

    first = tmp_path / "first.dcm"
    first_uid = _fresh_study(real_dicom_files[0], first)
    first_count = _send_and_wait(deployment, first, first_uid, "pacs-a")
    assert first_count >= 2  # at least a summary SC and the SR
    assert _held(deployment.pacs["pacs-b"], first_uid) == 0

    # Repoint the route at B. Nothing restarts.
    changed = _api(
        api.patch(f"/api/v1/routes/{route['id']}", json={"destinations": [ids["pacs-b"]]})
    )
    assert [d["name"] for d in changed["destinations"]] == ["pacs-b"]

    second = tmp_path / "second.dcm"
    second_uid = _fresh_study(real_dicom_files[1], second)
    assert _send_and_wait(deployment, second, second_uid, "pacs-b") >= 2
    assert _held(deployment.pacs["pacs-a"], second_uid) == 0
    assert _held(deployment.pacs["pacs-a"], first_uid) == first_count  # A kept what it had

    deployment.alive()
    assert [s.process.pid for s in deployment.services] == pids
    with deployment.engine.connect() as conn:
        changes = conn.execute(
            select(AuditEvent.actor, AuditEvent.detail).where(AuditEvent.action == "route.update")
        ).all()
    assert [(actor, detail["changes"]["destinations"]) for actor, detail in changes] == [
        ("user:admin", {"from": [ids["pacs-a"]], "to": [ids["pacs-b"]]})
    ]
