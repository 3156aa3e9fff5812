"""Load: several storescu senders at once, many studies; every instance in is stored, every study
processed once, every result delivered once, counted in the database and in the PACS.

CI runs 4 senders x 5 studies; ``RADLIGHT_LOAD_SENDERS`` and ``RADLIGHT_LOAD_STUDIES`` (studies
per sender) make it a soak (``make soak``). The counts are printed (``pytest -s``) and recorded in
docs/RELIABILITY.md.
"""

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Delivery, DeliveryState, Instance, Job, JobState, Result, Study
from tests.peers import wait_for
from tests.reliability.stack import deployment, make_study, storescu_async

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SENDERS = int(os.environ.get("RADLIGHT_LOAD_SENDERS", "4"))
STUDIES_PER_SENDER = int(os.environ.get("RADLIGHT_LOAD_STUDIES", "5"))


def test_concurrent_senders_nothing_lost_nothing_duplicated(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    # Two worker processes.
    _load(tmp_path, real_dicom_files, ("--concurrency", "2"), {})


def test_a_threads_pool_batching_across_jobs_loses_nothing(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    """The GPU layout (docs/DEPLOYMENT.md): one worker process running four jobs in threads,
    their images stacked into shared model runs (models/batching.py)."""
    worker_log = _load(
        tmp_path,
        real_dicom_files,
        ("--pool", "threads", "--concurrency", "4"),
        {"RADLIGHT_INFERENCE_BATCH_MAX": "4", "RADLIGHT_INFERENCE_BATCH_WAIT_MS": "50"},
    )
    assert "dynamic batching on: up to 4 images per model run from 4 concurrent jobs" in worker_log
    assert "concurrency: 4 (thread)" in worker_log  # Celery's banner: one process, 4 threads


def _load(
    tmp_path: Path,
    real_dicom_files: list[Path],
    worker_args: tuple[str, ...],
    settings: dict[str, str],
) -> str:
    """Send every sender's studies at once and check every count; returns the worker's log."""
    # A summary SC and an SR per study.
    with deployment(
        tmp_path, start=False, settings={"RADLIGHT_OVERLAYS_PER_IMAGE": "0", **settings}
    ) as deployed:
        engine, port, orthanc = deployed.engine, deployed.port, deployed.orthanc
        assert orthanc is not None
        worker = deployed.start("worker", "worker", *worker_args)
        node = deployed.start_node()

        batches: list[list[Path]] = []
        for sender in range(SENDERS):
            files: list[Path] = []
            for number in range(STUDIES_PER_SENDER):
                source = real_dicom_files[(sender + number) % len(real_dicom_files)]
                files += make_study(source, tmp_path / f"sender{sender}")[1]
            batches.append(files)
        sent_instances = sum(len(files) for files in batches)
        studies = SENDERS * STUDIES_PER_SENDER

        started = time.monotonic()
        senders = [
            storescu_async(port, *files, calling_ae=f"SENDER{i}") for i, files in enumerate(batches)
        ]
        for proc in senders:
            output, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, output

        def all_delivered() -> tuple[int, int] | None:
            node.assert_alive()
            worker.assert_alive()
            with engine.connect() as conn:
                done = conn.execute(
                    select(func.count()).select_from(Job).where(Job.state == JobState.SUCCEEDED)
                ).scalar_one()
                unsent = conn.execute(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.state != DeliveryState.SENT)
                ).scalar_one()
            return (done, unsent) if done == studies and unsent == 0 else None

        wait_for(all_delivered, timeout=600, interval=1, what="every study delivered")
        elapsed = time.monotonic() - started
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(Instance)).scalar_one()
            received = conn.execute(select(func.sum(Instance.received_count))).scalar_one()
            recorded_studies = conn.execute(select(func.count()).select_from(Study)).scalar_one()
            jobs = conn.execute(select(func.count()).select_from(Job)).scalar_one()
            claims = set(conn.execute(select(Job.attempts)).scalars())
            results = conn.execute(select(func.count()).select_from(Result)).scalar_one()
            sent = conn.execute(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.state == DeliveryState.SENT)
            ).scalar_one()
        in_pacs = len(orthanc.get("/instances"))
        print(
            f"\nload: {SENDERS} senders x {STUDIES_PER_SENDER} studies: instances in "
            f"{sent_instances}, stored {stored} (received {received}), studies {recorded_studies}, "
            f"jobs {jobs}, results {results}, delivered {sent}, in the PACS {in_pacs}; "
            f"{elapsed:.1f} s from the first C-STORE to the last delivery"
        )
        assert stored == received == sent_instances
        assert recorded_studies == jobs == studies
        assert claims == {1}  # every job ran once
        assert results == sent == in_pacs == 2 * studies
        return worker.log()
