"""The DICOM node process: the storage SCP plus the assembler thread, started and stopped together."""

import logging
import threading
from typing import Any

from sqlalchemy import Engine

from db.migrate import require_current_schema
from db.session import make_engine, make_session_factory
from dicom_node.assembly import Assembler, AssemblerThread
from dicom_node.scp import StoreContext, handlers, make_ae
from dicom_node.store import InstanceStore
from radlight.queue import TaskProducer
from radlight.settings import Settings

logger = logging.getLogger(__name__)


class DicomNode:
    """Owns the AE's server, the assembler and their resources."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.effective_database_url)
        require_current_schema(self.engine)
        self.sessions = make_session_factory(self.engine)
        self.store = InstanceStore(settings.store_dir)
        self.producer = TaskProducer(settings)
        self.assembler = Assembler(
            self.sessions,
            self.producer,
            quiet_seconds=settings.study_quiet_seconds,
            requeue_after_s=settings.requeue_after_s,
        )
        self._ae = make_ae(settings)
        self._server: Any = None
        self._thread: AssemblerThread | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        self.settings.store_dir.mkdir(parents=True, exist_ok=True)
        ctx = StoreContext(
            store=self.store,
            sessions=self.sessions,
            max_instance_bytes=self.settings.max_instance_bytes,
        )
        self._server = self._ae.start_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            block=False,
            evt_handlers=handlers(ctx),
        )
        self._thread = AssemblerThread(self.assembler, self.settings.assembler_interval_s)
        self._thread.start()
        logger.info(
            "DICOM node %s listening on %s:%d",
            self.settings.ae_title,
            self.settings.dicom_host,
            self.settings.dicom_port,
        )

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread.join(timeout=10)
        if self._server is not None:
            self._server.shutdown()
        self.producer.close()
        self.engine.dispose()
        self._stopped.set()
        logger.info("DICOM node stopped")
