"""Fail fast, with the fix, when the PostgreSQL or Redis the tests use is not reachable."""

import os
import socket
import sys

SERVICES = {
    "PostgreSQL": ("127.0.0.1", 5432, "pg_ctlcluster --skip-systemctl-redirect 15 main start"),
    "Redis": ("127.0.0.1", 6379, "redis-server --daemonize yes --bind 127.0.0.1 --port 6379"),
}


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def main() -> int:
    if os.environ.get("RADLIGHT_SKIP_SERVICE_CHECK"):
        return 0
    missing = [
        f"{name} at {host}:{port} (start it with: {fix})"
        for name, (host, port, fix) in SERVICES.items()
        if not reachable(host, port)
    ]
    for line in missing:
        sys.stderr.write(f"not reachable: {line}\n")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
