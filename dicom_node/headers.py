"""Reading and checking the header of a received instance, without decoding pixels.

pydicom reads truncated input without complaint, so truncation is detected here: every defined-length
element must hold as many bytes as it declares, and native Pixel Data must be as long as its
Rows x Columns x Samples x Bits x Frames say. Values longer than ``DEFER_BYTES`` (the pixel data)
are not read at all: the parser seeks past them and only their declared extent is checked against
the size of the input.
"""

import os
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from dicom_node.patient_age import patient_age
from radlight.errors import (
    MalformedInstanceError,
    MissingAttributeError,
    SOPClassMismatchError,
)
from radlight.uids import is_valid_uid

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA_TAG = 0x7FE00010
DEFER_BYTES = 64 * 1024  # longer values are skipped, not read: their extent is checked instead


@dataclass(frozen=True, kw_only=True)
class InstanceHeader:
    """What the node needs to file and route an instance; deliberately no patient data."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    patient_age_years: int | None = None  # for age routing; patient-level, never logged


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip()[:limit] or None


def _age_years(ds: Dataset) -> int | None:
    """Completed years, or None; an unreadable age never refuses the instance (it only routes)."""
    try:
        age = patient_age(ds)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return None if age is None else age.years


def _check_element_lengths(ds: Dataset, total_bytes: int) -> None:
    for tag, elem in ds._dict.items():
        if not isinstance(elem, RawDataElement) or elem.length == UNDEFINED_LENGTH:
            continue
        if elem.value is None and elem.length > 0:  # deferred: not read, its extent is checked
            actual = max(0, min(elem.length, total_bytes - elem.value_tell))
        else:
            actual = len(elem.value or b"")
        if actual != elem.length:
            raise MalformedInstanceError(
                f"truncated: element {tag:08X} declares {elem.length} bytes, has {actual}"
            )


def _value_length(ds: Dataset, keyword: str) -> int:
    """The length of a value without reading it (it may have been skipped)."""
    elem = ds.get_item(keyword, keep_deferred=True)
    if isinstance(elem, RawDataElement):
        return int(elem.length)
    return len(ds[keyword].value)


def _check_native_pixel_data(ds: Dataset, transfer_syntax: UID) -> None:
    if "PixelData" not in ds or transfer_syntax.is_encapsulated:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        bits = int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise MalformedInstanceError(f"pixel description is incomplete: {exc}") from exc
    expected = (rows * cols * samples * frames * bits + 7) // 8
    actual = _value_length(ds, "PixelData")
    if actual < expected:
        raise MalformedInstanceError(
            f"truncated: Pixel Data has {actual} bytes, {rows}x{cols}x{samples}x{frames} "
            f"at {bits} bits needs {expected}"
        )


def read_header(
    encoded: bytes, *, expected_sop_class_uid: str, expected_sop_instance_uid: str
) -> InstanceHeader:
    """Parse a Part-10 byte string and check it is a complete, identifiable instance."""
    return _read_header(
        BytesIO(encoded),
        len(encoded),
        expected_sop_class_uid=expected_sop_class_uid,
        expected_sop_instance_uid=expected_sop_instance_uid,
    )


def read_header_file(
    path: Path, *, expected_sop_class_uid: str, expected_sop_instance_uid: str
) -> InstanceHeader:
    """As :func:`read_header`, for a Part-10 file; reads the header, never the pixel data."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise MalformedInstanceError(f"cannot open the received data set: {exc}") from exc
    with handle:
        return _read_header(
            handle,
            os.fstat(handle.fileno()).st_size,
            expected_sop_class_uid=expected_sop_class_uid,
            expected_sop_instance_uid=expected_sop_instance_uid,
        )


def _read_header(
    source: BinaryIO,
    total_bytes: int,
    *,
    expected_sop_class_uid: str,
    expected_sop_instance_uid: str,
) -> InstanceHeader:
    try:
        ds = dcmread(source, defer_size=DEFER_BYTES)
        transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
        _check_element_lengths(ds, total_bytes)
        _check_native_pixel_data(ds, transfer_syntax)
        sop_class = str(ds.get("SOPClassUID", "") or "")
        sop_instance = str(ds.get("SOPInstanceUID", "") or "")
        study = str(ds.get("StudyInstanceUID", "") or "")
        series = str(ds.get("SeriesInstanceUID", "") or "")
        header = InstanceHeader(
            study_instance_uid=study,
            series_instance_uid=series,
            sop_instance_uid=sop_instance,
            sop_class_uid=sop_class,
            transfer_syntax_uid=str(transfer_syntax),
            modality=_text(ds, "Modality", 16),
            body_part_examined=_text(ds, "BodyPartExamined"),
            view_position=_text(ds, "ViewPosition", 16),
            patient_age_years=_age_years(ds),
        )
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, MalformedInstanceError):
            raise
        raise MalformedInstanceError(f"cannot parse the data set: {exc}") from exc
    except AttributeError as exc:
        raise MalformedInstanceError(f"no file meta information: {exc}") from exc

    for keyword, value in (
        ("StudyInstanceUID", header.study_instance_uid),
        ("SeriesInstanceUID", header.series_instance_uid),
        ("SOPInstanceUID", header.sop_instance_uid),
        ("SOPClassUID", header.sop_class_uid),
    ):
        if not is_valid_uid(value):
            raise MissingAttributeError(f"{keyword} is missing or not a valid UID")
    if header.sop_class_uid != expected_sop_class_uid:
        raise SOPClassMismatchError(
            f"data set SOP Class {header.sop_class_uid} differs from the request's "
            f"{expected_sop_class_uid}"
        )
    if header.sop_instance_uid != expected_sop_instance_uid:
        raise SOPClassMismatchError("data set SOP Instance UID differs from the request's")
    return header
