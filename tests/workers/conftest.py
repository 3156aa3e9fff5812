"""Worker-side fixtures: a real worker context (store, database, model registry, filesystem queue)
and a way to put received instances in it as the DICOM node does (store the bytes, record them).
"""

import contextlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from db.ingest import ReceivedInstance, RecordOutcome, record_instance
from db.session import transaction
from models.export import BuiltModel, build_tiny_classifier
from radlight.settings import Settings
from tests.brokers import forget_folder_bindings
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
    forget_folder_bindings()
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
    if isinstance(source, Path):
        data = source.read_bytes()
    else:
        buffer = BytesIO()
        source.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    relative = ctx.store.instance_path(
        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    )
    stored = ctx.store.write(relative, data)
    received = ReceivedInstance(
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        modality=ds.get("Modality"),
        body_part_examined=ds.get("BodyPartExamined"),
        view_position=ds.get("ViewPosition"),
        relative_path=stored.relative_path,
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        calling_ae=calling_ae,
        called_ae=called_ae,
    )
    with transaction(ctx.sessions) as session:
        return record_instance(received, session=session)
