"""PACS → RadLight → PACS on real peers: dcmtk storescu sends, a `radlight dicom-node` process
stores and assembles, a separate Celery worker process on the real Redis runs the ONNX model and
delivers, and a real Orthanc receives. Run on SQLite and on PostgreSQL.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]
from sqlalchemy import Engine, func, select

from db.models import (
    Delivery,
    DeliveryState,
    IngestFailure,
    Instance,
    Job,
    JobState,
    Result,
    Study,
    StudyState,
)
from db.session import make_engine
from dicom_node.status import STATUS_CANNOT_UNDERSTAND
from tests.peers import (
    Orthanc,
    Service,
    add_destination,
    dciodvfy_errors,
    echo_ok,
    free_port,
    radlight,
    radlight_service,
    require_tools,
    run_orthanc,
    storescu,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "chexnet-densenet121-untrained"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
SR_MODALITY = "SR"


@dataclass
class Deployment:
    env: dict[str, str]
    port: int
    orthanc: Orthanc
    engine: Engine
    node: Service
    worker: Service

    def alive(self) -> None:
        self.node.assert_alive()
        self.worker.assert_alive()

    def logs(self) -> str:
        return (
            f"--- node ---\n{self.node.log()[-4000:]}\n--- worker ---\n{self.worker.log()[-4000:]}"
        )


@pytest.fixture
def deployment(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Deployment]:
    require_tools()
    broker_url = redis_url
    port = free_port()
    env = {
        **os.environ,
        "RADLIGHT_DATA_DIR": str(tmp_path / "data"),
        "RADLIGHT_DATABASE_URL": database_url,
        "RADLIGHT_BROKER_URL": broker_url,
        "RADLIGHT_DICOM_HOST": "127.0.0.1",
        "RADLIGHT_DICOM_PORT": str(port),
        "RADLIGHT_STUDY_QUIET_SECONDS": "1.5",
        "RADLIGHT_ASSEMBLER_INTERVAL_S": "0.3",
        "RADLIGHT_DELIVERY_BACKOFF_S": "0.5",
        "TCP_NODELAY": "1",
    }
    radlight(env, "db", "upgrade")
    radlight(env, "models", "build", "densenet121-untrained")
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        add_destination(env, orthanc)
        radlight(
            env,
            "routes",
            "add",
            "chest",
            "--model",
            MODEL,
            "--modality",
            "DX",
            "--modality",
            "CR",
            "--destination",
            "pacs",
        )
        engine = make_engine(database_url)
        with (
            radlight_service(env, tmp_path, "dicom-node") as node,
            radlight_service(env, tmp_path, "worker", "--concurrency", "1") as worker,
        ):

            def node_answers() -> bool:
                node.assert_alive()
                return echo_ok(port)

            wait_for(node_answers, timeout=30, what="node C-ECHO")
            try:
                yield Deployment(env, port, orthanc, engine, node, worker)
            finally:
                engine.dispose()


def _study_series(orthanc: Orthanc, study_uid: str) -> list[dict[str, Any]]:
    studies = [
        s
        for s in orthanc.get("/studies?expand")
        if s["MainDicomTags"].get("StudyInstanceUID") == study_uid
    ]
    if not studies:
        return []
    series: list[dict[str, Any]] = orthanc.get(f"/studies/{studies[0]['ID']}/series")
    return series


def _results_arrived(deployment: Deployment, study_uid: str) -> list[dict[str, Any]] | None:
    """The study's series in Orthanc once every result RadLight recorded for it was sent there."""
    with deployment.engine.connect() as conn:
        rows = (
            conn.execute(
                select(Delivery.state)
                .join(Result, Delivery.result_id == Result.id)
                .join(Job, Result.job_id == Job.id)
                .join(Study, Job.study_id == Study.id)
                .where(Study.study_instance_uid == study_uid)
            )
            .scalars()
            .all()
        )
    if not rows or any(state != DeliveryState.SENT for state in rows):
        return None
    series = _study_series(deployment.orthanc, study_uid)
    instances = sum(len(s["Instances"]) for s in series)
    return series if instances == len(rows) else None


def _referenced_uids(ds: pydicom.Dataset) -> set[str]:
    uids: set[str] = set()
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPInstanceUID":
            uids.add(str(elem.value))
    return uids


def _instance_total(orthanc: Orthanc) -> int:
    return len(orthanc.get("/instances"))


def _wait_results(deployment: Deployment, study_uid: str) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        deployment.alive()
        return _results_arrived(deployment, study_uid)

    try:
        series: list[dict[str, Any]] = wait_for(check, timeout=180, what=f"results of {study_uid}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{deployment.logs()}") from exc
    return series


def _check_results(
    deployment: Deployment, series: list[dict[str, Any]], source_sop_uid: str, tmp_path: Path
) -> None:
    """An SC series and an SR series, each referencing the source, valid per dciodvfy."""
    kinds: dict[str, int] = {}
    for one in series:
        for instance_id in one["Instances"]:
            data = deployment.orthanc.get_bytes(f"/instances/{instance_id}/file")
            path = tmp_path / f"{instance_id}.dcm"
            path.write_bytes(data)
            ds = pydicom.dcmread(path)
            kind = "SR" if ds.Modality == SR_MODALITY else "SC"
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind == "SC":
                assert ds.SOPClassUID == SC_STORAGE
                assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source_sop_uid
                assert ds.BurnedInAnnotation == "YES"
            assert source_sop_uid in _referenced_uids(ds), f"{kind} does not reference source"
            assert "not for primary diagnosis" in ds.SeriesDescription.lower()
            assert ds.ContributingEquipmentSequence[0].ManufacturerModelName == MODEL
            errors, output = dciodvfy_errors(path)
            assert errors == [], f"dciodvfy on {kind}:\n{output}"
    # A summary SC per image (plus one SC per present finding) and one TID 1500 SR.
    assert kinds["SR"] == 1
    assert kinds["SC"] >= 1


def _send_raw(port: int, path: Path) -> int:
    ae = AE(ae_title="BADSENDER")
    ae.add_requested_context(SecondaryCaptureImageStorage, "1.2.840.10008.1.2")
    assoc = ae.associate("127.0.0.1", port, ae_title="RADLIGHT")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_pacs_to_radlight_to_pacs(
    deployment: Deployment, real_dicom_files: list[Path], tmp_path: Path
) -> None:
    sources = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in real_dicom_files}

    # 1. The real storescu sends both real chest X-rays; results reach Orthanc, valid.
    sent = storescu(deployment.port, *real_dicom_files)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    for ds in sources.values():
        series = _wait_results(deployment, str(ds.StudyInstanceUID))
        _check_results(deployment, series, str(ds.SOPInstanceUID), tmp_path)
    with deployment.engine.connect() as conn:
        states = conn.execute(select(Job.state)).scalars().all()
    assert sorted(states) == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    instances_before = _instance_total(deployment.orthanc)
    with deployment.engine.connect() as conn:
        recorded = conn.execute(select(func.count()).select_from(Result)).scalar_one()
    assert instances_before == recorded  # every result, once (the sources went elsewhere)
    # The worker's child loaded the route's model while it waited for its first job.
    assert "worker warm-up: 1 of 1 route models loaded" in deployment.worker.log()

    # 2. The same study again: stored again, assembled again, but no second set of results.
    assert storescu(deployment.port, *real_dicom_files).returncode == 0

    def reassembled() -> bool:
        with deployment.engine.connect() as conn:
            rows = conn.execute(select(Study.state, Study.instance_count)).all()
        return len(rows) == 2 and all(row.state == StudyState.COMPLETE for row in rows)

    # storescu returned, so both studies were re-opened (RECEIVING); COMPLETE means re-assembled.
    wait_for(reassembled, timeout=60, what="re-assembly")
    with deployment.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Job)).scalar_one() == 2
        assert conn.execute(select(Study.instance_count)).scalars().all() == [1, 1]
        assert conn.execute(select(Instance.received_count)).scalars().all() == [2, 2]
    assert _instance_total(deployment.orthanc) == instances_before

    # 3. A truncated file on the wire: a failure status and a recorded reason; the node goes on.
    raw = real_dicom_files[0].read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[: len(raw) * 2 // 3])
    assert _send_raw(deployment.port, truncated) == STATUS_CANNOT_UNDERSTAND
    with deployment.engine.connect() as conn:
        failure = conn.execute(select(IngestFailure)).one()
    assert failure.status == STATUS_CANNOT_UNDERSTAND
    assert "truncated" in failure.reason
    deployment.alive()

    # ... and the next valid study succeeds.
    fresh = pydicom.dcmread(real_dicom_files[1])
    fresh.StudyInstanceUID, fresh.SeriesInstanceUID = generate_uid(), generate_uid()
    fresh.SOPInstanceUID = fresh.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    fresh.PatientName, fresh.PatientID = "LEAKCHECK^RADIANT", "LEAK-7731"
    fresh.PatientBirthDate = "19451231"
    fresh_path = tmp_path / "fresh.dcm"
    fresh.save_as(fresh_path, enforce_file_format=True)
    assert storescu(deployment.port, fresh_path).returncode == 0
    series = _wait_results(deployment, str(fresh.StudyInstanceUID))
    _check_results(deployment, series, str(fresh.SOPInstanceUID), tmp_path)
    deployment.alive()

    # 4. No patient data in the logs (the logs themselves are not empty: the check can fail).
    logs = deployment.node.log() + deployment.worker.log()
    assert "stored instance" in logs
    assert "succeeded" in logs
    for ds in [*sources.values(), fresh]:
        for keyword in ("PatientID", "PatientName", "PatientBirthDate"):
            value = str(ds.get(keyword, "") or "")
            if len(value) >= 3:
                assert value not in logs, f"{keyword} leaked into the logs"
