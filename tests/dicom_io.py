"""Writing datasets to bytes and reading them back strictly, for the result-builder tests."""

import io
from collections.abc import Iterator
from contextlib import contextmanager

import pydicom


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
