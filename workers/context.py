"""What a worker process needs, built once per process (after the prefork fork)."""

import logging
import threading
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, make_session_factory
from dicom_node.scu import KeptAssociations
from dicom_node.store import InstanceStore
from models.batching import BatchingPolicy, set_batching
from models.registry import ModelRegistry
from models.runtime import set_intra_op_threads
from radlight.queue import TaskProducer
from radlight.settings import Settings, load_settings


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: InstanceStore
    registry: ModelRegistry
    producer: TaskProducer
    sender: KeptAssociations  # this process's kept-open associations to destinations


logger = logging.getLogger(__name__)


def build_context(settings: Settings) -> WorkerContext:
    set_intra_op_threads(settings.effective_inference_threads, spinning=settings.inference_spinning)
    if settings.batches_inference:
        set_batching(
            BatchingPolicy(
                max_images=settings.inference_batch_max,
                wait_s=settings.inference_batch_wait_ms / 1000.0,
            )
        )
        logger.info(
            "dynamic batching on: up to %d images per model run from %d concurrent jobs, "
            "waiting up to %g ms for more",
            settings.inference_batch_max,
            settings.worker_concurrency,
            settings.inference_batch_wait_ms,
        )
    elif settings.inference_batch_max > 1:
        logger.warning(
            "RADLIGHT_INFERENCE_BATCH_MAX=%d has no effect with the prefork pool, where a process "
            "runs one job at a time; set RADLIGHT_WORKER_POOL=threads to batch across jobs",
            settings.inference_batch_max,
        )
    engine = make_engine(settings.effective_database_url)
    return WorkerContext(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        store=InstanceStore(settings.store_dir),
        registry=ModelRegistry(settings.models_dir),
        producer=TaskProducer(settings),
        sender=KeptAssociations(calling_ae=settings.result_ae_title),
    )


_context: WorkerContext | None = None
_context_lock = threading.Lock()


def process_context() -> WorkerContext:
    """The context of this worker process, created lazily so that it is never shared by a fork,
    and once, however many of its threads (the threads pool) ask for it first."""
    global _context
    with _context_lock:
        if _context is None:
            _context = build_context(load_settings())
        return _context
