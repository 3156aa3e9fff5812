"""The lease a worker holds on the job it runs, renewed by a heartbeat thread.

A claimed job carries ``lease_expires_at``; while the pipeline works, a daemon thread pushes it
forward every third of the lease. If the worker process dies (SIGKILL, OOM, a lost machine) the
renewals stop, the lease runs out, and the dispatcher queues the job again for another worker.
The lease is short (``RADLIGHT_JOB_LEASE_S``) and independent of how long inference takes, so a
slow job is never taken from a live worker and a dead one is noticed within one lease.
"""

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.jobs import renew_lease
from db.session import transaction

logger = logging.getLogger(__name__)


def worker_name() -> str:
    """Who holds a lease: host and process id, unique among live workers."""
    return f"{socket.gethostname()}:{os.getpid()}"[:255]


class _Heartbeat(threading.Thread):
    def __init__(
        self, sessions: sessionmaker[Session], job_id: int, worker: str, lease_s: float
    ) -> None:
        super().__init__(name=f"radlight-lease-{job_id}", daemon=True)
        self._sessions = sessions
        self._job_id = job_id
        self._worker = worker
        self._lease_s = lease_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._lease_s / 3):
            try:
                with transaction(self._sessions) as session:
                    held = renew_lease(
                        session=session,
                        job_id=self._job_id,
                        worker=self._worker,
                        lease_s=self._lease_s,
                    )
            except SQLAlchemyError as exc:
                # The database is away: keep trying; if it stays away the lease runs out and
                # another worker takes the job, whose deterministic UIDs replace these results.
                logger.warning("could not renew the lease of job %d: %s", self._job_id, exc)
                continue
            if not held:
                # Finished a moment ago, or re-queued after the lease ran out (this worker
                # stalled); either way there is nothing left to renew.
                logger.info("job %d: this worker no longer holds its lease", self._job_id)
                return

    def stop(self) -> None:
        self._stop_event.set()


@contextmanager
def held_lease(
    sessions: sessionmaker[Session], job_id: int, worker: str, lease_s: float
) -> Iterator[None]:
    """Renew ``worker``'s lease on ``job_id`` while the block runs."""
    heartbeat = _Heartbeat(sessions, job_id, worker, lease_s)
    heartbeat.start()
    try:
        yield
    finally:
        heartbeat.stop()
        heartbeat.join(timeout=5)
