"""The real pediatric pneumonia demo model end to end on real peers.

The 16 pediatric val JPEGs that ship in the model's wheel become one DICOM study (DX, MONOCHROME2,
8-bit, PatientAge 003Y, AP); dcmtk's storescu sends it to a `radlight dicom-node` process, a Celery
worker process on the real Redis runs the model (built once per machine, tests/pneumonia_build.py,
installed with `radlight models build pneumonia-demo`, which also adds the pediatric route), and
Orthanc receives the SR, whose Pneumonia probabilities must be the model README's within 1e-3.
An adult NIH study (PatientAge "58") sent to the same node is "not analysed", with the reason.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.models import Job, JobState
from db.session import make_engine
from models.export import BuiltModel
from models.pneumonia_demo import GOLDEN_PROBABILITIES, NAME, VERSION
from tests.peers import (
    Orthanc,
    Service,
    echo_ok,
    free_port,
    radlight,
    radlight_service,
    require_tools,
    run_orthanc,
    storescu,
    wait_for,
)
from tests.pneumonia_build import build_demo_once, demo_build_dir, write_pediatric_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PNEUMONIA_CODE = "233604007"


@dataclass
class Node:
    port: int
    orthanc: Orthanc
    engine: Engine
    node: Service
    worker: Service

    def logs(self) -> str:
        return (
            f"--- node ---\n{self.node.log()[-4000:]}\n--- worker ---\n{self.worker.log()[-4000:]}"
        )


@pytest.fixture(scope="module")
def demo() -> tuple[BuiltModel, Path]:
    return build_demo_once()


@pytest.fixture
def node(tmp_path: Path, demo: tuple[BuiltModel, Path], redis_url: str) -> Iterator[Node]:
    require_tools()
    broker_url = redis_url
    database_url = f"sqlite:///{tmp_path / 'radlight.db'}"
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
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        radlight(
            env,
            *("destinations", "add", "pacs", "--host", "127.0.0.1"),
            *("--port", str(orthanc.dicom_port), "--ae-title", orthanc.ae_title),
        )
        output = radlight(
            env,
            *("models", "build", "pneumonia-demo", "--build-dir", str(demo_build_dir())),
            *("--destination", "pacs"),
            timeout=600,
        )
        assert f"installed {NAME} {VERSION}" in output
        assert "route pediatric-pneumonia-demo (CR, DX)" in output
        engine = make_engine(database_url)
        with (
            radlight_service(env, tmp_path, "dicom-node") as node_service,
            radlight_service(env, tmp_path, "worker", "--concurrency", "1") as worker,
        ):

            def answers() -> bool:
                node_service.assert_alive()
                return echo_ok(port)

            wait_for(answers, timeout=30, what="node C-ECHO")
            try:
                yield Node(port, orthanc, engine, node_service, worker)
            finally:
                engine.dispose()


def _sr_of(orthanc: Orthanc, study_uid: str) -> bytes | None:
    studies = [
        s
        for s in orthanc.get("/studies?expand")
        if s["MainDicomTags"].get("StudyInstanceUID") == study_uid
    ]
    if not studies:
        return None
    series: list[dict[str, Any]] = orthanc.get(f"/studies/{studies[0]['ID']}/series")
    for one in series:
        if one["MainDicomTags"].get("Modality") == "SR" and one["Instances"]:
            data: bytes = orthanc.get_bytes(f"/instances/{one['Instances'][0]}/file")
            return data
    return None


def _jobs(engine: Engine) -> list[tuple[JobState, str | None]]:
    with Session(engine) as session:
        return [(job.state, job.reason) for job in session.scalars(select(Job))]


def test_pediatric_study_runs_end_to_end_and_adults_are_not_analysed(
    node: Node, demo: tuple[BuiltModel, Path], real_dicom_files: list[Path], tmp_path: Path
) -> None:
    _, images = demo
    jpegs = sorted(images.glob("*.jpeg"))
    assert len(jpegs) == 16
    files = write_pediatric_study(jpegs, tmp_path / "pediatric")
    by_sop = {
        str(pydicom.dcmread(f).SOPInstanceUID): jpeg.name
        for f, jpeg in zip(files, jpegs, strict=True)
    }
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)

    sent = storescu(node.port, *files, real_dicom_files[0])
    assert sent.returncode == 0, sent.stdout + sent.stderr

    def sr_arrived() -> bytes | None:
        node.node.assert_alive()
        node.worker.assert_alive()
        return _sr_of(node.orthanc, study_uid)

    try:
        data = wait_for(sr_arrived, timeout=240, what="the pediatric study's SR")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{node.logs()}") from exc
    sr = pydicom.dcmread(BytesIO(data))
    assert sr.ContributingEquipmentSequence[0].ManufacturerModelName == NAME
    assert "not for primary diagnosis" in sr.SeriesDescription.lower()
    report = hd.sr.MeasurementReport.from_sequence([sr])
    seen = {}
    for sop_uid, jpeg_name in by_sop.items():
        (group,) = report.get_image_measurement_groups(referenced_sop_instance_uid=sop_uid)
        (measurement,) = group.get_measurements()
        assert measurement.name.value == PNEUMONIA_CODE
        seen[jpeg_name] = float(measurement.value)
    assert set(seen) == set(GOLDEN_PROBABILITIES)
    for name, probability in seen.items():
        assert probability == pytest.approx(GOLDEN_PROBABILITIES[name], abs=1e-3), name
    assert sum((p > 0.5) == name.startswith("person") for name, p in seen.items()) == 13

    adult = pydicom.dcmread(real_dicom_files[0], stop_before_pixels=True)

    def both_jobs_final() -> list[tuple[JobState, str | None]] | None:
        jobs = _jobs(node.engine)
        final = {JobState.SUCCEEDED, JobState.NOT_ANALYSED, JobState.FAILED}
        return jobs if len(jobs) == 2 and all(state in final for state, _ in jobs) else None

    wait_for(both_jobs_final, timeout=60, what="both jobs finished")
    reasons = dict(_jobs(node.engine))
    assert set(reasons) == {JobState.SUCCEEDED, JobState.NOT_ANALYSED}, reasons
    assert reasons[JobState.NOT_ANALYSED] == (
        f"not analysed: {adult.SOPInstanceUID}: patient age 58 y is outside this model's "
        "range 1\u20135 y (pediatric demo model)"
    )
    assert reasons[JobState.SUCCEEDED] is None
