"""A throwaway PostgreSQL cluster that a test may stop and start (the shared server must not be).

initdb and pg_ctl refuse to run as root. CI and this machine run tests as root, so there the
cluster belongs to the ``postgres`` OS user (which the Debian package creates) and its commands
run through ``runuser``; a non-root developer runs them as themself. The data folder lives in its
own ``/tmp`` directory because pytest's ``tmp_path`` is private to root.
"""

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.peers import free_port


def _tool(name: str) -> str:
    """``name`` from PATH, else from Debian's versioned server folder (newest first)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/bin")
    if found is None:
        versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
        found = str(versions[0]) if versions else None
    if found is None:
        raise AssertionError(f"{name} not found: install PostgreSQL's server binaries")
    return found


@dataclass
class PrivateCluster:
    data_dir: Path
    port: int
    owner: str | None  # the OS user to run pg_ctl as (None: the current user)

    @property
    def url(self) -> str:
        user = self.owner or pwd.getpwuid(os.getuid()).pw_name
        return f"postgresql://{user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = list(args)
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
        if completed.returncode != 0:
            raise AssertionError(f"{args[0]} failed: {completed.stdout}{completed.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} -c fsync=off"
        self._run(
            _tool("pg_ctl"), "-D", str(self.data_dir), "-o", options,
            "-l", str(self.data_dir / "server.log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(_tool("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivateCluster]:
    """initdb a cluster (trust auth, 127.0.0.1 on a free port), start it, remove it afterwards."""
    owner = "postgres" if os.getuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="radlight-pg-"))
    data_dir = root / "data"
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = PrivateCluster(data_dir, free_port(), owner)
    try:
        cluster._run(
            _tool("initdb"), "-D", str(data_dir), "-A", "trust", "-U",
            owner or pwd.getpwuid(os.getuid()).pw_name, "--no-sync",
        )  # fmt: skip
        cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
