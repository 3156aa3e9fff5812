"""The DICOM node process (the storage SCP, with or without the assembler thread) and the
dispatcher process (the assembler loop alone).

On one machine the node runs the assembler itself. At scale the SCP runs in as many replicas as the
senders need, while one dispatcher assembles studies and keeps committed jobs on the queue. A second
dispatcher would only repeat that work (duplicate messages, which the job claim makes harmless, and
conflicting inserts that fail and are retried on the next tick), so deployments run exactly one.
"""

import ctypes
import ctypes.util
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import require_current_schema
from db.session import make_engine, make_session_factory
from dicom_node.assembly import Assembler, AssemblerThread
from dicom_node.incoming import receive_into, stop_receiving
from dicom_node.scp import StoreContext, handlers, make_ae
from dicom_node.store import InstanceStore
from dicom_node.tls import server_context
from dicom_node.wakeup import WakeupReceiver, WakeupSender, wakeup_address
from radlight.queue import TaskProducer
from radlight.settings import Settings

logger = logging.getLogger(__name__)

# A receive in progress writes its file at least every network timeout; an older one was left by
# a node that died mid-transfer (other listener processes may be receiving into the same folder).
STALE_INCOMING_S = 3600.0
_PR_SET_PDEATHSIG = 1


def _make_assembler(
    settings: Settings, sessions: sessionmaker[Session], producer: TaskProducer
) -> Assembler:
    return Assembler(
        sessions,
        producer,
        quiet_seconds=settings.study_quiet_seconds,
        requeue_after_s=settings.requeue_after_s,
    )


def die_with_parent(parent_pid: int) -> None:
    """In a listener process: get SIGTERM when the node that started it dies (Linux), and stop
    now if it already has."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


class ListenerProcesses:
    """``count`` more SCP-only node processes on the same port (SO_REUSEPORT), the kernel
    spreading associations over them: C-STORE handling is Python, so one process uses one core.
    They inherit this process's environment (settings) and stop with it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for _ in range(self.count):
            self._processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "radlight",
                        "dicom-node",
                        "--extra-listener",
                        str(os.getpid()),
                    ]
                )
            )
        if self.count:
            logger.info("started %d more listener processes", self.count)

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._processes.clear()


def _server_tls(settings: Settings) -> ssl.SSLContext | None:
    if settings.dicom_tls_cert_file is None or settings.dicom_tls_key_file is None:
        return None
    return server_context(
        cert_file=settings.dicom_tls_cert_file,
        key_file=settings.dicom_tls_key_file,
        ca_file=settings.dicom_tls_ca_file,
        require_client_cert=settings.dicom_tls_require_client_cert,
    )


class DicomNode:
    """Owns the AE's server, the assembler (unless ``run_assembler`` is false) and their resources."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        *,
        run_assembler: bool = True,
        extra_listeners: int = 0,
        wake_node_pid: int | None = None,
    ) -> None:
        """``wake_node_pid``: in an extra listener process, the node whose assembler its C-STORE
        handler wakes (by default the node itself, when it runs the assembler)."""
        self.settings = settings
        self.run_assembler = run_assembler
        if wake_node_pid is None and run_assembler:
            wake_node_pid = os.getpid()
        self._wake_address = (
            None if wake_node_pid is None else wakeup_address(settings.dicom_port, wake_node_pid)
        )
        self._wake_sender: WakeupSender | None = None
        self.listeners = ListenerProcesses(extra_listeners)
        self.engine = engine or make_engine(settings.effective_database_url)
        require_current_schema(self.engine)
        self.sessions = make_session_factory(self.engine)
        self.store = InstanceStore(settings.store_dir)
        self.producer = TaskProducer(settings)
        self.assembler = _make_assembler(settings, self.sessions, self.producer)
        self._ae = make_ae(settings)
        self._server: Any = None
        self._thread: AssemblerThread | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        self.settings.store_dir.mkdir(parents=True, exist_ok=True)
        self.store.incoming_dir.mkdir(exist_ok=True)
        self.store.discard_stale_incoming(STALE_INCOMING_S)
        receive_into(self.store.incoming_dir)
        wakeups = None
        if self.run_assembler and self._wake_address is not None:
            # Bound before the server starts, so the first instance's wake-up finds it.
            wakeups = WakeupReceiver.open(self._wake_address)
        if self._wake_address is not None:
            self._wake_sender = WakeupSender(self._wake_address)
        ctx = StoreContext(
            store=self.store,
            engine=self.engine,
            sessions=self.sessions,
            max_instance_bytes=self.settings.max_instance_bytes,
            min_free_bytes=self.settings.store_min_free_bytes,
            on_recorded=self._wake_sender,
        )
        self._server = self._ae.start_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            block=False,
            ssl_context=_server_tls(self.settings),
            evt_handlers=handlers(ctx),
        )
        self.listeners.start()
        if self.run_assembler:
            self._thread = AssemblerThread(
                self.assembler,
                self.settings.assembler_interval_s,
                self.settings.assembler_poll_s,
                wakeups=wakeups,
            )
            self._thread.start()
        logger.info(
            "DICOM node %s listening on %s:%d%s (assembler %s)",
            self.settings.ae_title,
            self.settings.dicom_host,
            self.settings.dicom_port,
            " over TLS" if self.settings.dicom_tls else "",
            "in this process" if self.run_assembler else "in the dispatcher",
        )

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self) -> None:
        self.listeners.stop()
        if self._thread is not None:
            self._thread.stop()
            self._thread.join(timeout=10)
        if self._server is not None:
            self._server.shutdown()
        stop_receiving()
        if self._wake_sender is not None:
            self._wake_sender.close()
        self.producer.close()
        self.engine.dispose()
        self._stopped.set()
        logger.info("DICOM node stopped")


class Dispatcher:
    """The assembler loop as its own process: one per deployment, beside any number of nodes.

    ``heartbeat``, if given, is touched after every tick, so that a liveness probe can tell a
    looping dispatcher from a hung one without a network port.
    """

    def __init__(
        self, settings: Settings, engine: Engine | None = None, *, heartbeat: Path | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.effective_database_url)
        require_current_schema(self.engine)
        self.producer = TaskProducer(settings)
        self.assembler = _make_assembler(settings, make_session_factory(self.engine), self.producer)
        self.heartbeat = heartbeat
        self._stopped = threading.Event()

    def run(self) -> None:
        """Tick every ``assembler_interval_s`` until :meth:`stop`; then release the resources."""
        logger.info("dispatcher started (tick every %.1f s)", self.settings.assembler_interval_s)
        self.assembler.connect_queue()
        try:
            while not self._stopped.wait(self.settings.assembler_interval_s):
                self.assembler.tick()
                if self.heartbeat is not None:
                    self.heartbeat.touch()
        finally:
            self.producer.close()
            self.engine.dispose()
            logger.info("dispatcher stopped")

    def stop(self) -> None:
        self._stopped.set()
