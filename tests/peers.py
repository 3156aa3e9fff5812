"""Real peers for integration tests: Orthanc, the radlight processes, ports, databases."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

ORTHANC = "/usr/sbin/Orthanc"
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
DCIODVFY = "/usr/bin/dciodvfy"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
POSTGRES_ADMIN_URL = os.environ.get(
    "RADLIGHT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("RADLIGHT_TEST_REDIS", "redis://127.0.0.1:6379")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.25, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")


def dicom_env() -> dict[str, str]:
    """dcmtk and Orthanc from Debian stall on large images without TCP_NODELAY."""
    return dict(os.environ, TCP_NODELAY="1")


@dataclass
class Orthanc:
    dicom_port: int
    http_port: int
    ae_title: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        response = httpx.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def get_bytes(self, path: str) -> bytes:
        response = httpx.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.content


@contextlib.contextmanager
def run_orthanc(
    workdir: Path,
    ae_title: str = "ORTHANC",
    *,
    dicom_port: int | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Iterator[Orthanc]:
    """Orthanc on free ports, or on ``dicom_port`` (a PACS that comes up where one was down);
    ``extra_config`` adds or overrides configuration options (e.g. DICOM TLS)."""
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = dicom_port or free_port(), free_port()
    config = {
        "Name": "radlight-test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "HttpsVerifyPeers": False,
        "Plugins": [],
        "StableAge": 1,
        **(extra_config or {}),
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (workdir / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=dicom_env()
    )
    orthanc = Orthanc(dicom_port, http_port, ae_title, process)
    try:

        def _up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(workdir / 'orthanc.log').read_text()}")
            try:
                return httpx.get(orthanc.url + "/system", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(_up, timeout=30, what="Orthanc")
        yield orthanc
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@contextlib.contextmanager
def postgres_database(template: str | None = None) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards: empty, or a copy of the database named
    ``template`` (which nothing may be connected to meanwhile)."""
    name = f"radlight_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def node_env(
    data_dir: Path, *, database_url: str, broker_url: str, port: int, quiet_s: float = 1.5
) -> dict[str, str]:
    """Environment for `radlight` processes of one test deployment: its own data folder,
    database and broker, the node on 127.0.0.1:``port``, short quiet and back-off times."""
    return {
        **dicom_env(),
        "RADLIGHT_DATA_DIR": str(data_dir),
        "RADLIGHT_DATABASE_URL": database_url,
        "RADLIGHT_BROKER_URL": broker_url,
        "RADLIGHT_DICOM_HOST": "127.0.0.1",
        "RADLIGHT_DICOM_PORT": str(port),
        "RADLIGHT_STUDY_QUIET_SECONDS": str(quiet_s),
        "RADLIGHT_ASSEMBLER_INTERVAL_S": "0.3",
        "RADLIGHT_DELIVERY_BACKOFF_S": "0.5",
    }


def radlight(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run the real ``radlight`` CLI; fail with its output if it fails."""
    completed = subprocess.run(
        [sys.executable, "-m", "radlight", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise AssertionError(
            f"radlight {' '.join(args)} exited {completed.returncode}:\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    return completed.stdout


def add_destination(env: dict[str, str], orthanc: "Orthanc", name: str = "pacs") -> None:
    """Orthanc as the destination ``name``, added the documented way (``radlight destinations add``)."""
    radlight(
        env,
        "destinations",
        "add",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(orthanc.dicom_port),
        "--ae-title",
        orthanc.ae_title,
    )


def create_user(env: dict[str, str], username: str, role: str, password: str) -> None:
    """A user made the documented way: ``radlight users create``, password on standard input."""
    args = ("users", "create", username, "--role", role, "--password-stdin")
    completed = subprocess.run(
        [sys.executable, "-m", "radlight", *args],
        input=password + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.process.returncode}:\n{self.log()}")


@contextlib.contextmanager
def radlight_service(
    env: dict[str, str],
    workdir: Path,
    *args: str,
    name: str | None = None,
    process_group: bool = False,
) -> Iterator[Service]:
    """Start ``radlight ARGS`` as its own process and stop it (SIGTERM, then kill) afterwards.

    ``name`` names its log (default: from the args); with ``process_group`` it leads a process
    group of its own, which the stop signals reach whole (a worker's pool children too), and
    which a fault test may SIGKILL as one (``kill_service``).
    """
    name = name or "-".join(args).replace("/", "_")  # a path among the args must not make folders
    log_path = workdir / f"{name}.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "radlight", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=process_group,
    )
    service = Service(name, process, log_path)

    def signal_all(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if process_group:
                os.killpg(process.pid, signum)
            else:
                os.kill(process.pid, signum)

    try:
        yield service
    finally:
        signal_all(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            signal_all(signal.SIGKILL)
            process.wait(timeout=10)
        if process_group:
            signal_all(signal.SIGKILL)  # pool children still there after the leader left
        log.close()


def kill_service(service: Service) -> None:
    """SIGKILL a ``process_group`` service and everything it started, as a lost machine would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.process.pid, signal.SIGKILL)
    service.process.wait(timeout=20)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def echo_ok(port: int, called_ae: str = "RADLIGHT") -> bool:
    completed = subprocess.run(
        [ECHOSCU, "-aec", called_ae, "127.0.0.1", str(port)],
        capture_output=True,
        env=dicom_env(),
        timeout=30,
        check=False,
    )
    return completed.returncode == 0


def storescu(
    port: int,
    *files: Path,
    called_ae: str = "RADLIGHT",
    calling_ae: str = "PACS",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            STORESCU,
            *extra,
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            "127.0.0.1",
            str(port),
            *(str(f) for f in files),
        ],
        capture_output=True,
        text=True,
        env=dicom_env(),
        timeout=120,
        check=False,
    )


def dciodvfy_errors(path: Path) -> tuple[list[str], str]:
    """dciodvfy's error lines for ``path`` and its whole output."""
    completed = subprocess.run(
        [DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    output = completed.stdout + completed.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    return errors, output


def require_tools() -> None:
    missing = [tool for tool in (ORTHANC, STORESCU, ECHOSCU, DCIODVFY) if not shutil.which(tool)]
    if missing:
        raise AssertionError(f"missing tools {missing}: run .ci/run or `make setup`")


@dataclass
class Redis:
    """A private redis-server: its own port and folder, so a test may stop and restart it, and
    tests running side by side never share a broker database."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "redis.log"
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "yes",  # a stop and start keeps the queued messages, as a real deployment does
                "--logfile",
                str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

        def _up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(_up, timeout=20, interval=0.05, what="redis-server")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@contextlib.contextmanager
def run_redis(workdir: Path) -> Iterator[Redis]:
    """A private Redis on a free port for one test (stopped afterwards)."""
    server = Redis(free_port(), workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
