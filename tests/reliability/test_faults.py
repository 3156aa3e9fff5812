"""Fault injection on real processes: each test stops or kills a real peer or RadLight process and
checks that no study is lost and no result is duplicated.

Every test runs its own deployment (data folder, database, Redis, Orthanc, ports;
``tests.reliability.stack``), so they run in parallel with any other test; every wait is bounded.
docs/RELIABILITY.md says what each one proves.
"""

import signal
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from db.migrate import upgrade
from db.models import Delivery, DeliveryState, IngestFailure, Job, JobState, Result, Study
from db.session import make_engine
from dicom_node.status import STATUS_OUT_OF_RESOURCES
from tests.peers import free_port, radlight, run_orthanc, storescu, wait_for
from tests.reliability.disk import small_disk
from tests.reliability.postgres import private_postgres
from tests.reliability.stack import (
    Deployment,
    deployment,
    kill,
    make_study,
    pacs_instances,
    process,
    stack_env,
    storescu_async,
    study_counts,
    wait_delivered,
    wait_node,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _refused_with_a700(output: str) -> bool:
    """storescu -v's report of a C-STORE answered 0xA700 (Refused: Out of Resources)."""
    text = output.lower().replace(" ", "")
    return "a700" in text or "outofresources" in text


def _send(port: int, *files: Path) -> tuple[bool, str]:
    """storescu (verbose, so it prints each response); True when every store succeeded."""
    sent = storescu(port, *files, extra=("-v",))
    output = sent.stdout + sent.stderr
    return sent.returncode == 0 and not _refused_with_a700(output), output


def _delivered_once(deployed: Deployment, study_uid: str, timeout: float = 120) -> int:
    """Wait for the study's deliveries; check the PACS holds each result exactly once."""
    assert deployed.orthanc is not None
    counts = wait_delivered(deployed.engine, study_uid, *deployed.running(), timeout=timeout)
    in_pacs = pacs_instances(deployed.orthanc, study_uid)
    assert len(in_pacs) == len(set(in_pacs)) == counts.results > 0
    return counts.results


def test_redis_stopped_while_studies_arrive(tmp_path: Path, real_dicom_files: list[Path]) -> None:
    """C-STORE succeeds with the broker down; the jobs wait in the database and run once the
    broker is back, each once."""
    with deployment(tmp_path) as deployed:
        node = deployed.node
        assert node is not None
        deployed.broker.stop()
        studies = [make_study(source, tmp_path / "in") for source in real_dicom_files]
        for _, files in studies:
            stored, output = _send(deployed.port, *files)
            assert stored, output

        def jobs_waiting() -> bool:
            node.assert_alive()
            return all(study_counts(deployed.engine, uid).jobs for uid, _ in studies)

        wait_for(jobs_waiting, timeout=60, what="a job per study")
        wait_for(
            lambda: "could not queue job" in node.log(),
            timeout=60,
            what="the dispatcher to try the stopped broker",
        )
        for study_uid, _ in studies:
            counts = study_counts(deployed.engine, study_uid)
            assert counts.instances == 1
            assert counts.jobs == [("pending", 0)]  # committed, not lost, not yet queued

        deployed.broker.start()
        for study_uid, _ in studies:
            results = _delivered_once(deployed, study_uid)
            assert study_counts(deployed.engine, study_uid).jobs == [("succeeded", 1)]
            print(f"redis stopped: study stored, {results} results delivered after restart")


def test_worker_killed_mid_job_completes_once_on_another_worker(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    """SIGKILL of a worker's whole process group while it runs a job: its lease runs out, the
    dispatcher queues the job again, a second worker runs it, and the PACS gets each result once."""
    with deployment(tmp_path, start=False, settings={"RADLIGHT_JOB_LEASE_S": "4"}) as deployed:
        first = deployed.start("worker-a", "worker", "--hostname", "a@%h")
        node = deployed.start_node()
        # Ten half-size images in one job (a summary SC each, and the SR): long enough to be
        # caught running.
        study_uid, files = make_study(real_dicom_files[0], tmp_path / "in", count=10, shrink=2)
        stored, output = _send(deployed.port, *files)
        assert stored, output

        def running() -> str | None:
            first.assert_alive()
            with deployed.engine.connect() as conn:
                row = conn.execute(
                    select(Job.state, Job.worker)
                    .join(Study)
                    .where(Study.study_instance_uid == study_uid)
                ).one_or_none()
            return row.worker if row is not None and row.state == JobState.RUNNING else None

        holder = wait_for(running, timeout=90, interval=0.05, what="the job to run")
        kill(first)
        counts = study_counts(deployed.engine, study_uid)
        assert counts.jobs == [("running", 1)], "the job finished before the kill"
        assert counts.results == 0
        assert deployed.orthanc is not None
        assert pacs_instances(deployed.orthanc, study_uid) == []

        deployed.worker = deployed.start("worker-b", "worker", "--hostname", "b@%h")
        results = _delivered_once(deployed, study_uid)
        assert results == 11
        assert study_counts(deployed.engine, study_uid).jobs == [("succeeded", 2)]  # 2 claims
        with deployed.engine.connect() as conn:
            finisher = conn.execute(select(Job.worker)).scalar_one()
        assert finisher != holder
        assert f"worker {holder} lost its lease" in node.log()
        print(f"worker SIGKILL: {results} results, each once in the PACS")


def _delivery_rows(deployed: Deployment, study_uid: str) -> list[tuple[int, str, int, str | None]]:
    with deployed.engine.connect() as conn:
        rows = conn.execute(
            select(Delivery.id, Delivery.state, Delivery.attempts, Delivery.reason)
            .join(Result, Delivery.result_id == Result.id)
            .join(Job, Result.job_id == Job.id)
            .join(Study, Job.study_id == Study.id)
            .where(Study.study_instance_uid == study_uid)
            .order_by(Delivery.id)
        ).all()
    return [(r.id, str(r.state), r.attempts, r.reason) for r in rows]


def test_pacs_down_retries_with_backoff_then_dead_letters_and_api_retry(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    """Deliveries to a stopped PACS retry with back-off and succeed when it returns; past the
    retry limit they are dead-lettered with the reason, and the API's retry sends them."""
    pacs_port, api_port = free_port(), free_port()
    settings = {
        "RADLIGHT_API_HOST": "127.0.0.1",
        "RADLIGHT_API_PORT": str(api_port),
        "RADLIGHT_DELIVERY_MAX_ATTEMPTS": "5",
        "RADLIGHT_DELIVERY_BACKOFF_S": "0.5",  # 0.5, 1, 2, 4 s: 7.5 s to the dead letter
    }
    with (
        deployment(tmp_path, pacs_port=pacs_port, settings=settings) as deployed,
        ExitStack() as pacs,
    ):
        key = radlight(deployed.env, "api-keys", "create", "ops", "--role", "operator").strip()
        api = deployed.start("api", "api")
        worker = deployed.worker
        assert worker is not None

        def deliveries_are(study_uid: str, state: DeliveryState, min_attempts: int) -> bool:
            worker.assert_alive()
            rows = _delivery_rows(deployed, study_uid)
            return bool(rows) and all(s == state and a >= min_attempts for _, s, a, _ in rows)

        # 1. The PACS is down: every delivery fails and is retried with back-off ...
        first_uid, first_files = make_study(real_dicom_files[0], tmp_path / "in")
        assert _send(deployed.port, *first_files)[0]
        wait_for(
            lambda: deliveries_are(first_uid, DeliveryState.RETRYING, 2),
            timeout=90,
            what="deliveries retrying",
        )
        reason = _delivery_rows(deployed, first_uid)[0][3]
        assert reason is not None
        assert reason.startswith("attempt 2/5:")
        # ... and succeeds once the PACS is back, on the port it had.
        deployed.orthanc = pacs.enter_context(
            run_orthanc(tmp_path / "orthanc", dicom_port=pacs_port)
        )
        _delivered_once(deployed, first_uid, timeout=60)
        assert all(attempts >= 3 for _, _, attempts, _ in _delivery_rows(deployed, first_uid))

        # 2. The PACS goes away again, for longer than the retry budget: dead-lettered.
        pacs.close()
        second_uid, second_files = make_study(real_dicom_files[1], tmp_path / "in")
        assert _send(deployed.port, *second_files)[0]
        wait_for(
            lambda: deliveries_are(second_uid, DeliveryState.FAILED, 5),
            timeout=90,
            what="deliveries dead-lettered",
        )
        failed = _delivery_rows(deployed, second_uid)
        for _, _, attempts, why in failed:
            assert attempts == 5
            assert why is not None
            assert why.startswith("gave up after 5 attempts:")
        headers = {"X-API-Key": key}
        base = f"http://127.0.0.1:{api_port}/api/v1"

        def api_up() -> bool:
            api.assert_alive()
            try:
                return httpx.get(f"http://127.0.0.1:{api_port}/ready", timeout=5).is_success
            except httpx.HTTPError:
                return False

        wait_for(api_up, timeout=60, what="API /ready")
        listed = httpx.get(f"{base}/deliveries", params={"state": "failed"}, headers=headers)
        assert listed.status_code == 200, listed.text
        shown = {item["id"]: item for item in listed.json()["items"]}
        assert set(shown) == {delivery_id for delivery_id, _, _, _ in failed}
        assert all(item["reason"].startswith("gave up after 5") for item in shown.values())

        # 3. The PACS is back; an operator retries each dead letter through the API.
        deployed.orthanc = pacs.enter_context(
            run_orthanc(tmp_path / "orthanc", dicom_port=pacs_port)
        )
        for delivery_id in shown:
            response = httpx.post(f"{base}/deliveries/{delivery_id}/retry", headers=headers)
            assert response.status_code == 202, response.text
            assert response.json()["queued"] is True
        _delivered_once(deployed, second_uid, timeout=60)
        first_results = study_counts(deployed.engine, first_uid).results
        assert len(pacs_instances(deployed.orthanc, first_uid)) == first_results
        print(f"PACS down: {len(failed)} dead letters retried from the API and delivered")


def test_node_restarted_in_the_middle_of_a_study(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    """The node is killed while a sender is half-way through a study; the sender sends it again
    to the restarted node; the study is complete and processed once (on SQLite)."""
    database_url = f"sqlite:///{tmp_path / 'radlight.db'}"
    # The quiet period outlasts the restart, as a site sets it to outlast its senders' pauses.
    with deployment(tmp_path, database_url=database_url, start=False, quiet_s=12) as deployed:
        deployed.worker = deployed.start("worker", "worker")
        # Full size, so the sender is still sending when the node is killed.
        study_uid, files = make_study(real_dicom_files[0], tmp_path / "in", count=8, shrink=1)
        with process(deployed.env, tmp_path, "node-1", "dicom-node") as node:
            wait_node(node, deployed.port)
            sender = storescu_async(deployed.port, *files)
            wait_for(
                lambda: study_counts(deployed.engine, study_uid).instances >= 1,
                timeout=60,
                interval=0.02,
                what="the first instance",
            )
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=20)
            output, _ = sender.communicate(timeout=60)
        stored_before = study_counts(deployed.engine, study_uid).instances
        assert 1 <= stored_before < len(files), output
        assert study_counts(deployed.engine, study_uid).jobs == []

        deployed.start_node()
        stored, output = _send(deployed.port, *files)  # the sender sends the whole study again
        assert stored, output
        results = _delivered_once(deployed, study_uid)
        counts = study_counts(deployed.engine, study_uid)
        assert counts.instances == len(files)
        assert counts.jobs == [("succeeded", 1)]
        with deployed.engine.connect() as conn:
            inputs = conn.execute(select(Job.input_sop_instance_uids)).scalar_one()
        assert len(inputs) == len(files)
        print(
            f"node restart: {stored_before}/{len(files)} stored before the kill; {results} results"
        )


def test_postgres_restart_answers_a700_then_recovers(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    """With its database stopped the node answers 0xA700 (never Success), stays up, and stores
    and processes the same study once the database is back."""
    with private_postgres() as cluster, deployment(tmp_path, database_url=cluster.url) as deployed:
        node = deployed.node
        assert node is not None
        study_uid, files = make_study(real_dicom_files[0], tmp_path / "in")

        cluster.stop()
        stored, output = _send(deployed.port, *files)
        assert not stored, output
        assert _refused_with_a700(output), output
        node.assert_alive()
        assert "refused C-STORE with status 0xA700" in node.log()

        cluster.start()

        def stored_again() -> bool:
            node.assert_alive()
            return _send(deployed.port, *files)[0]

        wait_for(stored_again, timeout=60, interval=1, what="the node to record again")
        results = _delivered_once(deployed, study_uid)
        counts = study_counts(deployed.engine, study_uid)
        assert counts.instances == 1
        assert counts.jobs == [("succeeded", 1)]
        print(f"PostgreSQL restart: refused with 0xA700, then {results} results")


def test_store_below_watermark_answers_a700_and_resumes(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    """The free-space watermark on a real file system: the store gets a small disk of its own
    (``small_disk``), a real file fills it past the watermark, then goes away."""
    database_url = f"sqlite:///{tmp_path / 'radlight.db'}"
    data_dir = tmp_path / "data"
    with small_disk(data_dir / "store") as disk:
        port = free_port()
        env = stack_env(
            data_dir,
            database_url=database_url,
            broker_url=f"redis://127.0.0.1:{free_port()}/0",  # never reached: no study completes
            port=port,
            quiet_s=600,
            RADLIGHT_STORE_MIN_FREE_BYTES=str(disk.watermark),
        )
        upgrade(database_url)
        engine = make_engine(database_url)
        try:
            with process(env, tmp_path, "node", "dicom-node") as node:
                wait_node(node, port)
                study_uid, files = make_study(real_dicom_files[0], tmp_path / "in")
                stored, output = _send(port, *files)  # room enough: stored
                assert stored, output

                late_uid, late_files = make_study(real_dicom_files[1], tmp_path / "in")
                with disk.filled():
                    stored, output = _send(port, *late_files)
                    assert not stored, output
                    assert _refused_with_a700(output), output
                    assert study_counts(engine, late_uid).instances == 0
                    with engine.connect() as conn:
                        failure = conn.execute(
                            select(IngestFailure.status, IngestFailure.reason)
                        ).one()
                    assert failure.status == STATUS_OUT_OF_RESOURCES
                    assert "free-space watermark" in failure.reason
                stored, output = _send(port, *late_files)  # the space is back
                assert stored, output
                assert study_counts(engine, study_uid).instances == 1
                assert study_counts(engine, late_uid).instances == 1
                node.assert_alive()
        finally:
            engine.dispose()
