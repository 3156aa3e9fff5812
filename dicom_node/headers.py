"""Reading and checking the header of a received instance, without decoding pixels.

pydicom reads truncated input without complaint, so truncation is detected here: every defined-length
element must hold as many bytes as it declares, and native Pixel Data must be as long as its
Rows x Columns x Samples x Bits x Frames say. Values longer than ``DEFER_BYTES`` (the pixel data)
are not read at all: the parser seeks past them and only their declared extent is checked against
the size of the input. pydicom also forgives an encoding that differs from the transfer syntax (it
switches between implicit and explicit VR with a warning) and inflates a deflated data set whole;
here the first is refused and the second is measured, in bounded steps, before pydicom reads it (a
deflate bomb costs at most the size limit, never the memory).
"""

import os
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import VR

from dicom_node.patient_age import patient_age
from radlight.errors import (
    InstanceTooLargeError,
    MalformedInstanceError,
    MissingAttributeError,
    SOPClassMismatchError,
)
from radlight.uids import is_valid_uid

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA_TAG = 0x7FE00010
DEFER_BYTES = 64 * 1024  # longer values are skipped, not read: their extent is checked instead
PREAMBLE_AND_PREFIX = 132  # 128-byte preamble + "DICM"
GROUP_LENGTH_ELEMENT = 12  # (0002,0000) UL: tag, VR, 2-byte length, 4-byte value
INFLATE_STEP = 1 << 20
KNOWN_VRS = frozenset(str(vr) for vr in VR)


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


def _check_elements(ds: Dataset, transfer_syntax: UID, total_bytes: int) -> None:
    """Each top-level element is as long as it says and is encoded as the transfer syntax says.

    pydicom reads an element's VR from the wire (explicit VR) or leaves it None (implicit VR),
    switching silently when the data disagree with the transfer syntax; a stored file would then
    say one encoding and hold another, which other readers cannot read. A value longer than
    ``DEFER_BYTES`` was not read: its extent is checked against the input's size instead.
    """
    implicit = transfer_syntax.is_implicit_VR
    for tag, elem in ds._dict.items():
        if not isinstance(elem, RawDataElement):
            continue
        if implicit and elem.VR is not None:
            raise MalformedInstanceError(
                f"element {tag:08X} is encoded in explicit VR but the transfer syntax is implicit VR"
            )
        if not implicit and (elem.VR is None or elem.VR not in KNOWN_VRS):
            raise MalformedInstanceError(f"element {tag:08X} has an invalid VR {elem.VR!r}")
        if elem.length == UNDEFINED_LENGTH:
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


def _dataset_offset(source: BinaryIO) -> int:
    """Where the data set starts in a Part-10 stream whose meta begins with its group length."""
    source.seek(0)
    head = source.read(PREAMBLE_AND_PREFIX + GROUP_LENGTH_ELEMENT)
    start = PREAMBLE_AND_PREFIX + GROUP_LENGTH_ELEMENT
    if len(head) < start or head[PREAMBLE_AND_PREFIX : PREAMBLE_AND_PREFIX + 4] != (
        b"\x02\x00\x00\x00"
    ):
        raise MalformedInstanceError("no file meta group length")
    group_length: int = struct.unpack_from("<I", head, start - 4)[0]
    return start + group_length


def _check_nothing_after_last_element(ds: Dataset, source: BinaryIO, total_bytes: int) -> None:
    """pydicom drops a tail too short for an element header; a data set must end on an element."""
    raw = [elem for elem in ds._dict.values() if isinstance(elem, RawDataElement)]
    if len(raw) != len(ds._dict):
        return
    if raw:
        last = max(raw, key=lambda elem: elem.value_tell)
        if last.length == UNDEFINED_LENGTH:
            return
        end = last.value_tell + last.length
    else:
        end = _dataset_offset(source)
    if end != total_bytes:
        raise MalformedInstanceError(
            f"truncated: {total_bytes - end} bytes after the last element do not form one"
        )


def _check_inflated_size(source: BinaryIO, limit: int) -> None:
    """Inflate a deflated data set in bounded steps, keeping nothing, and refuse it past ``limit``.

    pydicom would inflate the whole stream at once, so a few kilobytes of a deflate bomb could
    claim gigabytes; this costs one pass and at most ``INFLATE_STEP`` bytes at a time.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    source.seek(_dataset_offset(source))
    total = 0
    try:
        while not inflater.eof:
            pending = inflater.unconsumed_tail or source.read(INFLATE_STEP)
            if not pending:
                break
            total += len(inflater.decompress(pending, INFLATE_STEP))
            if total > limit:
                raise InstanceTooLargeError(
                    f"deflated data set inflates beyond the limit of {limit} bytes"
                )
    except zlib.error as exc:
        raise MalformedInstanceError(
            f"deflated data set is not a valid deflate stream: {exc}"
        ) from exc
    finally:
        source.seek(0)


def _check_native_pixel_data(ds: Dataset, transfer_syntax: UID) -> None:
    if "PixelData" not in ds or transfer_syntax.is_encapsulated:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        bits = int(ds.BitsAllocated)
        stored, high = int(ds.BitsStored), int(ds.HighBit)  # int(): one value each, no more
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise MalformedInstanceError(f"pixel description is incomplete: {exc}") from exc
    if min(rows, cols, samples, frames, bits, stored) < 1 or not high < stored <= bits:
        raise MalformedInstanceError(
            f"pixel description is impossible: {rows}x{cols}x{samples}x{frames} at {bits} bits "
            f"({stored} stored, high bit {high})"
        )
    expected = (rows * cols * samples * frames * bits + 7) // 8
    actual = _value_length(ds, "PixelData")
    # Exactly the size the header describes, plus the one padding byte an odd size needs.
    if not expected <= actual <= expected + expected % 2:
        problem = "truncated: " if actual < expected else ""
        raise MalformedInstanceError(
            f"{problem}Pixel Data has {actual} bytes, {rows}x{cols}x{samples}x{frames} "
            f"at {bits} bits needs {expected}"
        )


def read_header(
    encoded: bytes,
    *,
    expected_sop_class_uid: str,
    expected_sop_instance_uid: str,
    transfer_syntax_uid: str | None = None,
    max_inflated_bytes: int | None = None,
) -> InstanceHeader:
    """Parse a Part-10 byte string and check it is a complete, identifiable instance.

    ``transfer_syntax_uid`` is the negotiated one, when known: a deflated data set is then
    inflated (bounded by ``max_inflated_bytes``) only to be measured before pydicom reads it.
    """
    return _read_header(
        BytesIO(encoded),
        len(encoded),
        expected_sop_class_uid=expected_sop_class_uid,
        expected_sop_instance_uid=expected_sop_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        max_inflated_bytes=max_inflated_bytes,
    )


def read_header_file(
    path: Path,
    *,
    expected_sop_class_uid: str,
    expected_sop_instance_uid: str,
    transfer_syntax_uid: str | None = None,
    max_inflated_bytes: int | None = None,
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
            transfer_syntax_uid=transfer_syntax_uid,
            max_inflated_bytes=max_inflated_bytes,
        )


def _read_header(
    source: BinaryIO,
    total_bytes: int,
    *,
    expected_sop_class_uid: str,
    expected_sop_instance_uid: str,
    transfer_syntax_uid: str | None,
    max_inflated_bytes: int | None,
) -> InstanceHeader:
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian and max_inflated_bytes is not None:
        _check_inflated_size(source, max_inflated_bytes)
    try:
        ds = dcmread(source, defer_size=DEFER_BYTES)
        transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
        if transfer_syntax.is_deflated:
            # Offsets of skipped values point into the inflated stream, not the input: read it
            # whole instead (its inflated size was measured above when the syntax was negotiated).
            source.seek(0)
            ds = dcmread(source)
        _check_elements(ds, transfer_syntax, total_bytes)
        if not transfer_syntax.is_deflated:
            _check_nothing_after_last_element(ds, source, total_bytes)
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
    except (
        InvalidDicomError,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        NotImplementedError,  # pydicom, on an unknown VR
        zlib.error,  # pydicom inflating a deflated data set that is not a deflate stream
        struct.error,
    ) as exc:
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
