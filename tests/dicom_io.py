"""Writing datasets to bytes and reading them back strictly, for the result-builder tests; storing
and recording a received instance as the DICOM node does."""

import io
from collections.abc import Iterator
from contextlib import contextmanager

import pydicom
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import ReceivedInstance, RecordOutcome, record_instance
from db.session import transaction
from dicom_node.store import InstanceStore


@contextmanager
def strict_reading() -> Iterator[None]:
    """pydicom raises on any invalid value while the block runs; the setting is restored after."""
    settings = pydicom.config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        settings.reading_validation_mode = previous


def to_bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def store_and_record(
    store: InstanceStore,
    sessions: sessionmaker[Session],
    data: bytes,
    *,
    calling_ae: str = "PACS",
    called_ae: str = "RADLIGHT",
) -> RecordOutcome:
    """Write a Part-10 file's bytes to the store and record the instance, as the node's C-STORE
    handler does."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    relative = store.instance_path(
        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    )
    stored = store.write(relative, data)
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
    with transaction(sessions) as session:
        return record_instance(received, session=session)
