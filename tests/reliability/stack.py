"""A RadLight deployment on private peers, for tests that stop and kill its parts.

Every test gets its own data folder, database, Redis (``tests.peers.run_redis``), Orthanc and DICOM
port, so fault tests run side by side with any other test. The model is the bundled tiny
classifier (built without torch in a few seconds); timings (quiet period, back-off, lease, tick)
are short and set through the environment, and every wait is bounded.
"""

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import Engine, func, select

from db.config import upsert_destination, upsert_route
from db.migrate import upgrade
from db.models import Delivery, DeliveryState, Instance, Job, Result, Series, Study
from db.session import make_engine, make_session_factory, transaction
from models.export import build_tiny_classifier
from models.registry import ModelRegistry
from tests.peers import (
    Orthanc,
    Redis,
    Service,
    dicom_env,
    echo_ok,
    free_port,
    kill_service,
    node_env,
    postgres_database,
    radlight_service,
    require_tools,
    run_orthanc,
    run_redis,
    wait_for,
)

MODEL = "tiny-test-classifier"


def stack_env(
    data_dir: Path,
    *,
    database_url: str,
    broker_url: str,
    port: int,
    quiet_s: float = 1.5,
    **extra: str,
) -> dict[str, str]:
    """``tests.peers.node_env`` plus short leases and re-queue times, and ``extra`` settings."""
    env = {
        **os.environ,
        **node_env(
            data_dir, database_url=database_url, broker_url=broker_url, port=port, quiet_s=quiet_s
        ),
        "RADLIGHT_JOB_LEASE_S": "3",
        "RADLIGHT_REQUEUE_AFTER_S": "120",  # no queue wait here is that long: no re-sends
        "RADLIGHT_STORE_MIN_FREE_BYTES": "0",
        "RADLIGHT_LOG_JSON": "true",
        # A summary SC per image and the SR: every result kind a fault can lose or duplicate,
        # without the per-finding overlays that only add work (other tests cover them).
        "RADLIGHT_OVERLAYS_PER_IMAGE": "0",
    }
    env.update(extra)
    return env


def configure(data_dir: Path, database_url: str, pacs_port: int, pacs_ae: str = "ORTHANC") -> None:
    """What an operator does once, done here in-process with the functions the CLI calls (four
    CLI processes would cost seconds of start-up per test): migrate, install the tiny model, add
    the PACS and a chest route to it."""
    upgrade(database_url)
    built = build_tiny_classifier(data_dir / "model-build")
    ModelRegistry(data_dir / "models").install(built.onnx_path, built.card)
    engine = make_engine(database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            upsert_destination(
                session=session, name="pacs", host="127.0.0.1", port=pacs_port, ae_title=pacs_ae
            )
            upsert_route(
                session=session,
                name="chest",
                model_name=MODEL,
                model_version=None,
                modalities=["DX", "CR"],
                destination_names=["pacs"],
            )
    finally:
        engine.dispose()


def process(
    env: dict[str, str], workdir: Path, name: str, *args: str
) -> contextlib.AbstractContextManager[Service]:
    """``radlight ARGS`` in a process group of its own (so ``kill`` takes its children too),
    logging to ``workdir/NAME.log``; stopped afterwards."""
    return radlight_service(env, workdir, *args, name=name, process_group=True)


kill = kill_service


def wait_node(node: Service, port: int) -> None:
    def answers() -> bool:
        node.assert_alive()
        return echo_ok(port)

    wait_for(answers, timeout=60, what="node C-ECHO")


def make_study(
    source: Path, folder: Path, count: int = 1, *, study_uid: str | None = None, shrink: int = 4
) -> tuple[str, list[Path]]:
    """``count`` copies of a real chest X-ray as one new study (new study, series and SOP UIDs),
    or as a new series of ``study_uid``.

    The image keeps every ``shrink``-th row and column (1024² becomes 256² by default): still the
    real radiograph, a sixteenth of the work for the worker, so the fault tests fit CI's budget.
    """
    ds = pydicom.dcmread(source)
    if shrink > 1:
        pixels = ds.pixel_array[::shrink, ::shrink].copy()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
    study_uid, series_uid = study_uid or generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for number in range(1, count + 1):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        path = folder / f"{study_uid}-{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


def storescu_async(port: int, *files: Path, calling_ae: str = "PACS") -> subprocess.Popen[str]:
    """The real storescu, started in the background (the caller waits on it, bounded)."""
    return subprocess.Popen(
        ["/usr/bin/storescu", "-aet", calling_ae, "-aec", "RADLIGHT", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dicom_env(),
    )


@dataclass
class StudyCounts:
    """What the database says about one study."""

    instances: int = 0
    jobs: list[tuple[str, int]] = field(default_factory=list)  # (state, attempts)
    results: int = 0
    deliveries: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return bool(self.deliveries) and all(s == DeliveryState.SENT for s in self.deliveries)


def study_counts(engine: Engine, study_uid: str) -> StudyCounts:
    with engine.connect() as conn:
        study_id = conn.execute(
            select(Study.id).where(Study.study_instance_uid == study_uid)
        ).scalar_one_or_none()
        if study_id is None:
            return StudyCounts()
        instances = conn.execute(
            select(func.count())
            .select_from(Instance)
            .join(Series, Instance.series_id == Series.id)
            .where(Series.study_id == study_id)
        ).scalar_one()
        jobs = [
            (str(row.state), int(row.attempts))
            for row in conn.execute(
                select(Job.state, Job.attempts).where(Job.study_id == study_id).order_by(Job.id)
            )
        ]
        results = conn.execute(
            select(func.count())
            .select_from(Result)
            .join(Job, Result.job_id == Job.id)
            .where(Job.study_id == study_id)
        ).scalar_one()
        deliveries = [
            str(state)
            for state in conn.execute(
                select(Delivery.state)
                .join(Result, Delivery.result_id == Result.id)
                .join(Job, Result.job_id == Job.id)
                .where(Job.study_id == study_id)
                .order_by(Delivery.id)
            ).scalars()
        ]
    return StudyCounts(instances, jobs, results, deliveries)


def pacs_instances(orthanc: Orthanc, study_uid: str) -> list[str]:
    """The SOP Instance UIDs the PACS holds for ``study_uid``."""
    response = httpx.post(
        orthanc.url + "/tools/find",
        json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        timeout=30,
    )
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return [str(item["MainDicomTags"]["SOPInstanceUID"]) for item in found]


def wait_delivered(
    engine: Engine, study_uid: str, *services: Service, timeout: float = 90
) -> StudyCounts:
    """Wait until every delivery of the study is SENT; fail with the services' logs if not."""

    def check() -> StudyCounts | None:
        for service in services:
            service.assert_alive()
        counts = study_counts(engine, study_uid)
        return counts if counts.delivered else None

    try:
        counts: StudyCounts = wait_for(check, timeout=timeout, interval=0.3, what="deliveries")
    except TimeoutError as exc:
        logs = "\n".join(f"--- {s.name} ---\n{s.log()[-3000:]}" for s in services)
        raise AssertionError(f"{exc}\n{study_counts(engine, study_uid)}\n{logs}") from exc
    return counts


def pacs_file(orthanc: Orthanc, sop_instance_uid: str) -> bytes:
    """The stored bytes of one instance the PACS holds."""
    response = httpx.post(
        orthanc.url + "/tools/find",
        json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}},
        timeout=30,
    )
    response.raise_for_status()
    (orthanc_id,) = response.json()
    return orthanc.get_bytes(f"/instances/{orthanc_id}/file")


@dataclass
class Deployment:
    """One test's RadLight: its settings, peers and the processes started for it."""

    workdir: Path
    env: dict[str, str]
    port: int
    engine: Engine
    broker: Redis
    orthanc: Orthanc | None
    stack: contextlib.ExitStack
    node: Service | None = None
    worker: Service | None = None

    def start(self, name: str, *args: str) -> Service:
        """``radlight ARGS`` for the rest of the test (logged to NAME.log)."""
        return self.stack.enter_context(process(self.env, self.workdir, name, *args))

    def start_node(self) -> Service:
        self.node = self.start("node", "dicom-node")
        wait_node(self.node, self.port)
        return self.node

    def running(self) -> list[Service]:
        return [s for s in (self.node, self.worker) if s is not None]


@contextlib.contextmanager
def deployment(
    workdir: Path,
    *,
    database_url: str | None = None,
    pacs_port: int | None = None,
    start: bool = True,
    quiet_s: float = 1.5,
    settings: dict[str, str] | None = None,
) -> Iterator[Deployment]:
    """A configured deployment on private peers: its own Redis, a fresh PostgreSQL database
    (unless ``database_url``), an Orthanc as its PACS (unless ``pacs_port``, a PACS that is not up),
    and with ``start`` a node and a worker already answering."""
    require_tools()
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(run_redis(workdir / "redis"))
        if database_url is None:
            database_url = stack.enter_context(postgres_database())
        orthanc = None
        if pacs_port is None:
            orthanc = stack.enter_context(run_orthanc(workdir / "orthanc"))
            pacs_port = orthanc.dicom_port
        port = free_port()
        env = stack_env(
            workdir / "data",
            database_url=database_url,
            broker_url=broker.url,
            port=port,
            quiet_s=quiet_s,
            **(settings or {}),
        )
        configure(workdir / "data", database_url, pacs_port)
        engine = make_engine(database_url)
        stack.callback(engine.dispose)
        deployed = Deployment(workdir, env, port, engine, broker, orthanc, stack)
        if start:
            deployed.worker = deployed.start("worker", "worker")
            deployed.start_node()
        yield deployed
