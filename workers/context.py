"""What a worker process needs, built once per process (after the prefork fork)."""

from dataclasses import dataclass
from functools import cache

from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, make_session_factory
from dicom_node.scu import KeptAssociations, proposed_syntaxes
from dicom_node.store import InstanceStore
from models.registry import ModelRegistry
from models.runtime import set_intra_op_threads
from radlight.queue import TaskProducer
from radlight.settings import Settings, load_settings

_UNCOMPRESSED = proposed_syntaxes(ExplicitVRLittleEndian)
# Every SOP class and syntax a worker's results come in: proposed on each kept association, so
# that a job's report, sent after its images, finds its context already there.
RESULT_CONTEXTS: dict[str, list[str]] = {
    SecondaryCaptureImageStorage: [*_UNCOMPRESSED, JPEGBaseline8Bit],
    ComprehensiveSRStorage: _UNCOMPRESSED,
    SegmentationStorage: _UNCOMPRESSED,
    GrayscaleSoftcopyPresentationStateStorage: _UNCOMPRESSED,
}


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
    set_intra_op_threads(settings.inference_threads)
    engine = make_engine(settings.effective_database_url)
    return WorkerContext(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        store=InstanceStore(settings.store_dir),
        registry=ModelRegistry(settings.models_dir),
        producer=TaskProducer(settings),
        sender=KeptAssociations(
            calling_ae=settings.result_ae_title, always_propose=RESULT_CONTEXTS
        ),
    )


@cache
def process_context() -> WorkerContext:
    """The context of this worker process, created lazily so that it is never shared by a fork."""
    return build_context(load_settings())
