"""The process set of docker-compose.yml, started on this machine without containers.

The commands and settings come from docker-compose.yml itself (only host-specific values are
replaced: database, broker, ports, data folder), so the file and this test cannot drift: a one-off
migration, a DICOM node without assembler, one dispatcher, an inference worker and a delivery worker
on their own queues, and the API, on the real PostgreSQL and Redis. A real storescu sends a real
chest X-ray; results arrive in a real Orthanc; each process did its own part, the image's health
check passes for each, and the API reports the finished work.
"""

import contextlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import func, select

from db.models import Delivery, DeliveryState, Job, JobState
from db.session import make_engine
from tests.conftest import REPO_ROOT
from tests.deploy.compose import RadLightService, radlight_services
from tests.peers import (
    Service,
    echo_ok,
    free_port,
    postgres_database,
    radlight,
    radlight_service,
    require_tools,
    run_orthanc,
    storescu,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-test-classifier"  # built without torch, as in the runtime image
SECRETS = {
    "POSTGRES_PASSWORD": "unused-here",
    "REDIS_PASSWORD": "unused-here",
    "RADLIGHT_SECRET_KEY": "process-set-test-signing-key-0123456789abcdef",
}
HEALTHCHECK = REPO_ROOT / "scripts" / "healthcheck.py"


def _host_command(service: RadLightService, workdir: Path) -> list[str]:
    """The service's command, with container paths moved under ``workdir``."""
    return [
        str(workdir / Path(part).name) if part.startswith("/tmp/") else part
        for part in service.command
    ]


def _healthcheck(env: dict[str, str], command: list[str]) -> str:
    completed = subprocess.run(
        [sys.executable, str(HEALTHCHECK), "radlight", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, f"{command}: {completed.stdout}{completed.stderr}"
    return completed.stdout


def test_compose_process_set_runs_a_study_end_to_end(
    tmp_path: Path,
    real_dicom_files: list[Path],
    redis_url: str,
) -> None:
    require_tools()
    services = radlight_services(SECRETS)
    broker_url = redis_url
    port, api_port = free_port(), free_port()

    with (
        postgres_database() as database_url,
        run_orthanc(tmp_path / "orthanc") as orthanc,
        contextlib.ExitStack() as running,
    ):
        host = {
            "RADLIGHT_DATABASE_URL": database_url,
            "RADLIGHT_BROKER_URL": broker_url,
            "RADLIGHT_DATA_DIR": str(tmp_path / "data"),  # the shared volume
            "RADLIGHT_DICOM_HOST": "127.0.0.1",
            "RADLIGHT_DICOM_PORT": str(port),
            "RADLIGHT_API_HOST": "127.0.0.1",
            "RADLIGHT_API_PORT": str(api_port),
            "RADLIGHT_STUDY_QUIET_SECONDS": "1.5",
            "RADLIGHT_ASSEMBLER_INTERVAL_S": "0.3",
            "RADLIGHT_DELIVERY_BACKOFF_S": "0.5",
            "TCP_NODELAY": "1",
        }
        envs = {s.name: {**os.environ, **s.environment, **host} for s in services}
        # Values the file sets and this test keeps: the same settings as in production.
        assert envs["api"]["RADLIGHT_SECRET_KEY"] == SECRETS["RADLIGHT_SECRET_KEY"]
        assert envs["api"]["RADLIGHT_LOG_JSON"] == "true"
        admin_env = envs["migrate"]

        # Compose order: the one-off migration runs to completion before anything else starts.
        first, *long_running = services
        assert first.name == "migrate"
        assert all(
            s.depends_on["migrate"] == "service_completed_successfully" for s in long_running
        )
        radlight(envs["migrate"], *first.command)

        # What an operator does once: a model, a destination, a route, an API key.
        radlight(admin_env, "models", "build", "tiny")
        radlight(
            admin_env, "destinations", "add", "pacs", "--host", "127.0.0.1",
            "--port", str(orthanc.dicom_port), "--ae-title", orthanc.ae_title,
        )  # fmt: skip
        radlight(
            admin_env, "routes", "add", "chest", "--model", MODEL,
            "--modality", "DX", "--modality", "CR", "--destination", "pacs",
        )  # fmt: skip
        api_key = radlight(admin_env, "api-keys", "create", "process-set", "--role", "viewer")
        api_key = api_key.strip()

        commands = {s.name: _host_command(s, tmp_path) for s in long_running}
        procs: dict[str, Service] = {
            s.name: running.enter_context(
                radlight_service(envs[s.name], tmp_path, *commands[s.name])
            )
            for s in long_running
        }

        def all_alive() -> None:
            for proc in procs.values():
                proc.assert_alive()

        def node_answers() -> bool:
            all_alive()
            return echo_ok(port)

        def api_ready() -> bool:
            all_alive()
            try:
                return httpx.get(f"http://127.0.0.1:{api_port}/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(node_answers, timeout=60, what="node C-ECHO")
        wait_for(api_ready, timeout=60, what="API /ready")
        heartbeat = Path(commands["dispatcher"][commands["dispatcher"].index("--heartbeat") + 1])
        wait_for(heartbeat.exists, timeout=30, what="dispatcher heartbeat")

        # The image's health check passes for each process, run as the container would run it.
        with ThreadPoolExecutor(max_workers=len(procs)) as pool:
            futures = {n: pool.submit(_healthcheck, envs[n], commands[n]) for n in procs}
            verdicts = {name: future.result() for name, future in futures.items()}
        assert "C-ECHO" in verdicts["dicom-node"]
        assert "pong" not in verdicts["worker-gpu"]  # a verdict line, not Celery's output
        assert verdicts["worker-gpu"].startswith("healthy: inference@")
        assert verdicts["worker-io"].startswith("healthy: io@")

        # A real chest X-ray, sent by the real storescu.
        source = real_dicom_files[0]
        study_uid = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
        sent = storescu(port, source)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        engine = make_engine(database_url)
        try:

            def delivered() -> bool:
                all_alive()
                with engine.connect() as conn:
                    states = conn.execute(select(Delivery.state)).scalars().all()
                return bool(states) and all(state == DeliveryState.SENT for state in states)

            try:
                wait_for(delivered, timeout=240, what="every delivery sent")
            except TimeoutError as exc:
                logs = "\n".join(f"--- {n} ---\n{p.log()[-3000:]}" for n, p in procs.items())
                raise AssertionError(f"{exc}\n{logs}") from exc
            with engine.connect() as conn:
                assert conn.execute(select(Job.state)).scalars().all() == [JobState.SUCCEEDED]
                deliveries = conn.execute(select(func.count()).select_from(Delivery)).scalar_one()
        finally:
            engine.dispose()

        # Every result reached the PACS, in the source's study.
        received = [
            s
            for s in orthanc.get("/studies?expand")
            if s["MainDicomTags"]["StudyInstanceUID"] == study_uid
        ]
        assert len(received) == 1
        assert (
            sum(len(orthanc.get(f"/series/{s}")["Instances"]) for s in received[0]["Series"])
            == deliveries
        )

        # Each process did its own part, and only that.
        process_logs = {name: proc.log() for name, proc in procs.items()}
        assert "stored instance" in process_logs["dicom-node"]
        assert "job 1 created" in process_logs["dispatcher"]
        assert "job 1 created" not in process_logs["dicom-node"]
        assert "job 1 succeeded" in process_logs["worker-gpu"]
        assert "job 1 succeeded" not in process_logs["worker-io"]
        assert "sent to ORTHANC" in process_logs["worker-io"]
        assert "sent to ORTHANC" not in process_logs["worker-gpu"]

        # The API, with the key an operator made, reports the finished job.
        jobs = httpx.get(
            f"http://127.0.0.1:{api_port}/api/v1/jobs", headers={"X-API-Key": api_key}, timeout=30
        )
        assert jobs.status_code == 200, jobs.text
        assert [job["state"] for job in jobs.json()["items"]] == ["succeeded"]
        all_alive()
