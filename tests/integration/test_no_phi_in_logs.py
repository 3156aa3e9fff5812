"""No patient data in any log line, through the whole stack.

A real chest X-ray gets a known, unique patient name, ID and birth date; dcmtk's storescu sends
it (and an inconsistent copy, which is refused) to a `radlight dicom-node` process; a Celery worker
process analyses it and delivers the results to Orthanc; a `radlight api` process serves it to an
authenticated reader. Every RadLight process runs at DEBUG, pynetdicom included, and every line
any of them wrote is searched for the markers in the encodings they could take.
"""

import os
import uuid
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from db.models import Delivery, DeliveryState, IngestFailure
from db.session import make_engine
from dicom_node.status import STATUS_CANNOT_UNDERSTAND
from tests.peers import (
    add_destination,
    create_user,
    echo_ok,
    free_port,
    node_env,
    radlight,
    radlight_service,
    require_tools,
    run_orthanc,
    run_redis,
    storescu,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "chexnet-densenet121-untrained"
PASSWORD = "a reader's long password"


def markers() -> tuple[str, str, str, str]:
    """Family and given name, patient ID, birth date: unique, so any hit is a leak."""
    tag = uuid.uuid4().hex[:8].upper()
    return f"Qzfamily{tag}", f"Qzgiven{tag}", f"QZPID{tag}", "19230817"


def encodings(family: str, given: str, patient_id: str, birth_date: str) -> list[str]:
    """Each marker as a log line could hold it; searched case-insensitively."""
    name = f"{family}^{given}"
    forms = [family, given, patient_id, birth_date, name, f"{given} {family}"]
    forms += ["1923-08-17", "17.08.1923", "08/17/1923"]
    forms += [name.encode().hex(), patient_id.encode().hex()]  # bytes logged as hex
    return forms


def test_no_log_line_of_any_process_holds_patient_data(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    require_tools()
    family, given, patient_id, birth_date = markers()
    ds = pydicom.dcmread(real_dicom_files[0])
    ds.PatientName = f"{family}^{given}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    marked = tmp_path / "marked.dcm"
    ds.save_as(marked, enforce_file_format=True)
    refused_copy = tmp_path / "inconsistent.dcm"  # Rows disagree with Pixel Data: 0xC210
    ds.Rows = int(ds.Rows) - 1
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(refused_copy, enforce_file_format=True)

    database_url = f"sqlite:///{tmp_path / 'radlight.db'}"
    port, api_port = free_port(), free_port()
    with run_redis(tmp_path / "redis") as broker, run_orthanc(tmp_path / "orthanc") as orthanc:
        env = {
            **os.environ,
            **node_env(
                tmp_path / "data", database_url=database_url, broker_url=broker.url, port=port
            ),
            "RADLIGHT_LOG_LEVEL": "DEBUG",
            "RADLIGHT_LOG_DICOM_LEVEL": "DEBUG",  # pynetdicom's own loggers too
            "RADLIGHT_API_PORT": str(api_port),
        }
        radlight(env, "db", "upgrade")
        radlight(env, "models", "build", "densenet121-untrained")
        add_destination(env, orthanc)
        radlight(env, "routes", "add", "chest", "--model", MODEL, "--destination", "pacs")
        create_user(env, "reader", "viewer", PASSWORD)
        engine = make_engine(database_url)
        with (
            radlight_service(env, tmp_path, "dicom-node") as node,
            radlight_service(env, tmp_path, "worker", "--concurrency", "1") as worker,
            radlight_service(env, tmp_path, "api") as api,
        ):
            services = (node, worker, api)

            def node_answers() -> bool:
                node.assert_alive()
                return echo_ok(port)

            wait_for(node_answers, timeout=60, what="node C-ECHO")
            sent = storescu(port, marked, extra=("-d",))
            assert sent.returncode == 0, sent.stderr
            storescu(port, refused_copy)  # refused; checked in the database below

            def delivered() -> bool:
                for service in services:
                    service.assert_alive()
                with engine.connect() as conn:
                    states = conn.execute(select(Delivery.state)).scalars().all()
                return bool(states) and all(s == DeliveryState.SENT for s in states)

            wait_for(delivered, timeout=240, what="the results delivered to Orthanc")
            with engine.connect() as conn:
                failure = conn.execute(select(IngestFailure.status)).scalar_one()
            assert failure == STATUS_CANNOT_UNDERSTAND
            engine.dispose()

            base = f"http://127.0.0.1:{api_port}"
            wait_for(lambda: _answers(base), timeout=60, what="the API")
            token = httpx.post(
                f"{base}/api/v1/auth/token",
                data={"username": "reader", "password": PASSWORD},
                timeout=30,
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            studies = httpx.get(f"{base}/api/v1/studies", headers=headers, timeout=30).json()
            study_uid = str(ds.StudyInstanceUID)
            assert study_uid in str(studies)
            detail = httpx.get(f"{base}/api/v1/studies/{study_uid}", headers=headers, timeout=30)
            assert detail.status_code == 200, detail.text
            failures = httpx.get(f"{base}/api/v1/ingest-failures", headers=headers, timeout=30)
            assert failures.status_code == 200
        # The processes have stopped: their logs are complete.
        logs = {service.name: service.log() for service in services}

    assert all(len(text.splitlines()) > 5 for text in logs.values()), logs
    assert "DEBUG" in logs["dicom-node"]  # the level really was DEBUG
    assert "pynetdicom" in logs["dicom-node"]  # and pynetdicom's own loggers spoke
    leaks = [
        f"{name}: {line[:300]}"
        for name, text in logs.items()
        for line in text.splitlines()
        for form in encodings(family, given, patient_id, birth_date)
        if form.lower() in line.lower()
    ]
    assert leaks == []


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
