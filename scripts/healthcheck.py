"""Health check for whichever RadLight process a container runs; exit 0 healthy, 1 not.

One image runs every process, so one check serves them all: it reads the process's command (its
arguments, or PID 1's command line in a container) and checks what that process promises:

- ``api``: ``GET /health`` answers 200;
- ``dicom-node``: a DICOM association is accepted and a C-ECHO answered, or the association is
  rejected (a calling-AE allow-list): either way the SCP is up and speaking DICOM;
- ``dispatcher``: its ``--heartbeat`` file was touched within ``RADLIGHT_HEALTHCHECK_MAX_AGE_S``;
- ``worker``: the Celery worker answers a ``ping`` over the broker;
- anything else (``db upgrade``): nothing to check.

Usage: ``healthcheck.py [radlight ARGS...]`` (the Docker image runs it with no arguments).
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

TIMEOUT_S = 10.0


def process_args(argv: Sequence[str]) -> list[str]:
    """The arguments after ``radlight`` (``tini -- radlight``, ``python -m radlight``) in ``argv``."""
    for index, arg in enumerate(argv):
        program = index == 0 or argv[index - 1] in ("--", "-m")
        if program and Path(arg).name == "radlight":
            return list(argv[index + 1 :])
    return list(argv)


def pid1_args(cmdline: Path = Path("/proc/1/cmdline")) -> list[str]:
    """The container's command: PID 1 is ``tini -- radlight ARGS`` in RadLight's images."""
    raw = cmdline.read_bytes()
    return process_args([part.decode() for part in raw.split(b"\0") if part])


def option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args``."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def check_api() -> str:
    port = os.environ.get("RADLIGHT_API_PORT", "8000")
    response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT_S)
    if response.status_code != 200:
        raise RuntimeError(f"/health answered {response.status_code}")
    return "api answers /health"


def check_dicom_node() -> str:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    port = int(os.environ.get("RADLIGHT_DICOM_PORT", "11112"))
    called = os.environ.get("RADLIGHT_AE_TITLE", "RADLIGHT")
    ae = AE(ae_title="HEALTHCHECK")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if assoc.is_rejected:
        return "dicom-node answers (association rejected: calling AE not on its allow-list)"
    if not assoc.is_established:
        raise RuntimeError(f"no association with {called} on port {port}")
    try:
        status = assoc.send_c_echo()
        if not status or int(status.Status) != 0:
            raise RuntimeError("C-ECHO failed")
    finally:
        assoc.release()
    return "dicom-node answers C-ECHO"


def check_dispatcher(args: Sequence[str]) -> str:
    heartbeat = option(args, "--heartbeat")
    if heartbeat is None:
        raise RuntimeError("the dispatcher runs without --heartbeat: nothing to check")
    max_age = float(os.environ.get("RADLIGHT_HEALTHCHECK_MAX_AGE_S", "120"))
    age = time.time() - Path(heartbeat).stat().st_mtime
    if age > max_age:
        raise RuntimeError(f"last tick {age:.0f} s ago (limit {max_age:.0f} s)")
    return f"dispatcher ticked {age:.0f} s ago"


def check_worker(args: Sequence[str]) -> str:
    host = socket.gethostname()
    name = (option(args, "--hostname") or "celery@%h").replace("%h", host)
    name = name.replace("%n", host.split(".")[0]).replace("%d", host.partition(".")[2])
    completed = subprocess.run(
        [
            str(Path(sys.executable).with_name("celery")),
            "--app=workers.tasks",
            "inspect",
            "ping",
            f"--destination={name}",
            f"--timeout={TIMEOUT_S}",
        ],
        capture_output=True,
        text=True,
        timeout=3 * TIMEOUT_S,
        check=False,
    )
    if completed.returncode != 0 or "pong" not in completed.stdout:
        raise RuntimeError(f"{name} did not answer ping: {completed.stdout}{completed.stderr}")
    return f"{name} answers ping"


def check(args: Sequence[str]) -> str:
    command = args[0] if args else ""
    if command == "api":
        return check_api()
    if command == "dicom-node":
        return check_dicom_node()
    if command == "dispatcher":
        return check_dispatcher(args)
    if command == "worker":
        return check_worker(args)
    return f"nothing to check for {command or 'no command'!r}"


def main(argv: Sequence[str]) -> int:
    args = process_args(argv) if argv else pid1_args()
    try:
        message = check(args)
    except (OSError, RuntimeError, httpx.HTTPError, subprocess.TimeoutExpired) as exc:
        sys.stdout.write(f"unhealthy: {exc}\n")
        return 1
    sys.stdout.write(f"healthy: {message}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
