"""What a worker process needs, built once per process (after the prefork fork)."""

from dataclasses import dataclass
from functools import cache

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, make_session_factory
from dicom_node.scu import KeptAssociations
from dicom_node.store import InstanceStore
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


def build_context(settings: Settings) -> WorkerContext:
    set_intra_op_threads(settings.effective_inference_threads, spinning=settings.inference_spinning)
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


@cache
def process_context() -> WorkerContext:
    """The context of this worker process, created lazily so that it is never shared by a fork."""
    return build_context(load_settings())
