"""Worker-side fixtures: a real worker context (store, database, model registry, filesystem queue)
and a way to put received instances in it as the DICOM node does (store the bytes, record them).
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from db.ingest import RecordOutcome
from models.export import BuiltModel, build_tiny_classifier
from radlight.settings import Settings
from tests.dicom_io import store_and_record, to_bytes
from workers.context import WorkerContext, build_context


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny-model"))


def worker_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "broker_url": None,  # kombu's filesystem transport under data_dir/queue: real, serverless
        "log_json": False,
        # Deliveries go through the queue here, where the tests read them; tests of the inline
        # path (tests/workers/test_stages.py) turn it on.
        "delivery_inline": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@contextlib.contextmanager
def worker_context(
    tmp_path: Path, database_url: str, model: BuiltModel, **overrides: object
) -> Iterator[WorkerContext]:
    """A worker context on a fresh database with ``model`` installed, closed afterwards."""
    context = build_context(worker_settings(tmp_path, database_url, **overrides))
    context.registry.install(model.onnx_path, model.card)
    try:
        yield context
    finally:
        context.sender.close()
        context.producer.close()
        context.engine.dispose()


@pytest.fixture
def ctx(tmp_path: Path, database_url: str, tiny_model: BuiltModel) -> Iterator[WorkerContext]:
    """A worker context on a fresh database, with the tiny classifier installed."""
    with worker_context(tmp_path, database_url, tiny_model) as context:
        yield context


def copy_with_new_uids(
    source: Path | pydicom.Dataset, *, study_uid: str | None = None, **changes: object
) -> pydicom.Dataset:
    """A copy of ``source`` as another instance (new series and SOP UIDs, and study unless
    given), with ``changes`` applied (keyword=value; None deletes the attribute)."""
    ds = pydicom.dcmread(source) if isinstance(source, Path) else source.copy()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def receive(
    ctx: WorkerContext,
    source: Path | pydicom.Dataset,
    *,
    calling_ae: str = "PACS",
    called_ae: str = "RADLIGHT",
) -> RecordOutcome:
    """Store a Part-10 file's bytes and record the instance, as the node's C-STORE handler does."""
    data = source.read_bytes() if isinstance(source, Path) else to_bytes(source)
    return store_and_record(
        ctx.store, ctx.sessions, data, calling_ae=calling_ae, called_ae=called_ae
    )
