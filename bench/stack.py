"""The whole RadLight stack on this machine, for the end-to-end and throughput benchmarks.

A private redis-server, PostgreSQL (a fresh database) or SQLite, Orthanc as the destination PACS,
a real ``radlight dicom-node`` and a real ``radlight worker`` (Celery, prefork), all as their own
processes, configured through the environment exactly as a deployment is. Studies are copies of a
real NIH chest X-ray (1024 x 1024, 8-bit DX) with new UIDs, sent with dcmtk's storescu. The
untrained DenseNet-121 is built once per benchmark run and copied into each stack.

Reuses tests/peers.py (the same helpers the integration tests use); nothing here is imported by
RadLight itself.
"""

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import Engine, case, func, select
from sqlalchemy.orm import Session

from db.models import Delivery, DeliveryState, Job, Result, Study
from db.session import make_engine
from tests.peers import (
    Orthanc,
    add_destination,
    echo_ok,
    free_port,
    node_env,
    postgres_database,
    radlight,
    radlight_service,
    run_orthanc,
    run_redis,
    storescu,
    wait_for,
)

MODEL = "chexnet-densenet121-untrained"
REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO.parent / "shared" / "assets" / "dicom" / "nih_00000001_000_google.dcm"


def build_models(workdir: Path) -> Path:
    """Build the untrained DenseNet-121 once; returns the models folder to copy into stacks."""
    env = {**os.environ, "RADLIGHT_DATA_DIR": str(workdir / "template"), "RADLIGHT_LOG_JSON": "0"}
    radlight(env, "models", "build", "densenet121-untrained", timeout=900)
    return workdir / "template" / "models"


def make_studies(folder: Path, count: int, source: Path = SOURCE) -> list[tuple[str, Path]]:
    """``count`` single-image studies: copies of ``source`` with new study, series and SOP UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(source)
    studies: list[tuple[str, Path]] = []
    for index in range(count):
        ds = template.copy()
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"study{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        studies.append((str(ds.StudyInstanceUID), path))
    return studies


@dataclass
class Stack:
    env: dict[str, str]
    port: int
    orthanc: Orthanc
    engine: Engine

    def send(self, *files: Path) -> None:
        """storescu, one association for the given files; raises if any C-STORE failed."""
        done = storescu(self.port, *files)
        if done.returncode != 0:
            raise RuntimeError(f"storescu failed: {done.stdout}{done.stderr}")


@contextlib.contextmanager
def full_stack(
    workdir: Path,
    models_dir: Path,
    *,
    backend: str,
    workers: int = 1,
    expected_instances: int | None = 1,
    quiet_s: float = 5.0,
    settings: dict[str, str] | None = None,
    warm_up: bool = True,
    pool: str = "prefork",
) -> Iterator[Stack]:
    """Everything started, a destination and a route configured, and (``warm_up``) one study per
    job the worker runs at once delivered. ``pool``: the worker's (``radlight worker --pool``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(run_redis(workdir / "redis"))
        if backend == "postgresql":
            database_url = stack.enter_context(postgres_database())
        else:
            database_url = f"sqlite:///{workdir / 'radlight.db'}"
        port = free_port()
        env = {
            **os.environ,
            **node_env(
                workdir / "data",
                database_url=database_url,
                broker_url=redis.url,
                port=port,
                quiet_s=quiet_s,
            ),
            "RADLIGHT_LOG_LEVEL": "WARNING",
            "RADLIGHT_MAX_ASSOCIATIONS": "32",
            **(settings or {}),
        }
        radlight(env, "db", "upgrade")
        shutil.copytree(models_dir, workdir / "data" / "models")
        orthanc = stack.enter_context(run_orthanc(workdir / "orthanc"))
        add_destination(env, orthanc)
        route = ["routes", "add", "chest", "--model", MODEL, "--modality", "DX"]
        route += ["--modality", "CR", "--destination", "pacs"]
        if expected_instances is not None:
            route += ["--expected-instances", str(expected_instances)]
        radlight(env, *route)
        node = stack.enter_context(radlight_service(env, workdir, "dicom-node"))
        worker = stack.enter_context(
            radlight_service(env, workdir, "worker", "--concurrency", str(workers), "--pool", pool)
        )

        def node_answers() -> bool:
            node.assert_alive()
            return echo_ok(port)

        wait_for(node_answers, timeout=60, what="node C-ECHO")
        engine = make_engine(database_url)
        stack.callback(engine.dispose)
        result = Stack(env, port, orthanc, engine)
        # Warm-up: every worker process has run a job before the measurement.
        for study_uid, path in make_studies(workdir / "warmup", workers if warm_up else 0):
            result.send(path)
            worker.assert_alive()
            wait_for(
                lambda uid=study_uid: delivered_at(engine, uid),  # type: ignore[misc]
                timeout=120 + quiet_s,
                interval=0.05,
                what="the warm-up study's results in the PACS",
            )
        yield result


def send_one(stack: Stack, study_uid: str, path: Path, timeout: float = 60) -> datetime:
    """Send one study with storescu and wait until all its results are in the PACS; returns when
    the last was stored there (its recorded ``sent_at``)."""
    stack.send(path)
    done: datetime = wait_for(
        lambda: delivered_at(stack.engine, study_uid),
        timeout=timeout,
        # The time is read from the recorded sent_at, not from this poll, so the poll only has
        # to be cheap: every 5 ms it took CPU from the stack it measures.
        interval=0.05,
        what="the study's results in Orthanc",
    )
    return done


def delivered_at(engine: Engine, study_uid: str) -> datetime | None:
    """When the last result of the study's job was stored in the destination, or None while any
    result is not sent yet."""
    times = all_delivered(engine, [study_uid])
    return None if times is None else times[study_uid]


def all_delivered(engine: Engine, study_uids: Sequence[str]) -> dict[str, datetime] | None:
    """The delivery time of each study, once every one of them is delivered (else None).

    One query for all the studies: the benchmark driver shares the machine with the stack it
    measures, so its polling must cost little (a query per study per poll took 9 % of the
    machine's CPU in a 60-study throughput run)."""
    sent = case((Delivery.state == DeliveryState.SENT, 1), else_=0)
    with Session(engine) as session:
        rows = session.execute(
            select(
                Study.study_instance_uid,
                func.count(Delivery.id),
                func.sum(sent),
                func.max(Delivery.sent_at),
            )
            .join(Job, Job.study_id == Study.id)
            .join(Result, Result.job_id == Job.id)
            .join(Delivery, Delivery.result_id == Result.id)
            .where(Study.study_instance_uid.in_(list(study_uids)))
            .group_by(Study.study_instance_uid)
        ).all()
    times = {uid: at for uid, count, done, at in rows if count and done == count and at}
    return times if len(times) == len(set(study_uids)) else None


def delivered_files(stack: Stack, study_uid: str) -> list[Path]:
    """The result files of the study's job that were sent to the PACS, as RadLight stored them."""
    store = Path(stack.env["RADLIGHT_DATA_DIR"]) / "store"
    with Session(stack.engine) as session:
        paths = session.scalars(
            select(Result.relative_path)
            .join(Job, Result.job_id == Job.id)
            .join(Study, Job.study_id == Study.id)
            .join(Delivery, Delivery.result_id == Result.id)
            .where(Study.study_instance_uid == study_uid)
            .distinct()
        ).all()
    return [store / path for path in paths]


def renamed_copies(files: Sequence[Path], folder: Path) -> list[Path]:
    """Copies with new SOP Instance UIDs: Orthanc keeps the first copy of an instance and would
    answer a second one without storing it."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        copy = folder / f"result{index}.dcm"
        ds.save_as(copy, enforce_file_format=True)
        copies.append(copy)
    return copies


def job_stages(engine: Engine, study_uids: Sequence[str]) -> list[dict[str, float]]:
    with Session(engine) as session:
        rows = session.scalars(
            select(Job.stage_ms)
            .join(Study, Job.study_id == Study.id)
            .where(Study.study_instance_uid.in_(list(study_uids)))
        ).all()
    return [dict(r) for r in rows if r]


def first_received(engine: Engine, study_uid: str) -> datetime:
    with Session(engine) as session:
        return session.scalars(
            select(Study.first_received_at).where(Study.study_instance_uid == study_uid)
        ).one()


def now() -> datetime:
    return datetime.now(UTC)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    cpus = os.cpu_count()
    load = os.getloadavg()[0]
    return f"{cpus} CPUs, load average {load:.1f} at start, Python {sys.version.split()[0]}"


def stopwatch() -> float:
    return time.perf_counter()


def dcmtk_version() -> str:
    done = subprocess.run(["/usr/bin/storescu", "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.stdout else "storescu"
