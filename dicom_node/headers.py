"""Reading and checking the header of a received instance, without decoding pixels.

pydicom reads truncated input without complaint, so truncation is detected here: every defined-length
element must hold as many bytes as it declares, and native Pixel Data must be as long as its
Rows x Columns x Samples x Bits x Frames say. pydicom also forgives an encoding that differs from
the transfer syntax (it switches between implicit and explicit VR with a warning) and inflates a
deflated data set whole; here the first is refused and the second is measured, in bounded steps,
before pydicom reads it (a deflate bomb costs at most the size limit, never the memory).
"""

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

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


def _check_elements(ds: Dataset, transfer_syntax: UID) -> None:
    """Each top-level element is as long as it says and is encoded as the transfer syntax says.

    pydicom reads an element's VR from the wire (explicit VR) or leaves it None (implicit VR),
    switching silently when the data disagree with the transfer syntax; a stored file would then
    say one encoding and hold another, which other readers cannot read.
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
        if elem.length != UNDEFINED_LENGTH:
            actual = len(elem.value or b"")
            if actual != elem.length:
                raise MalformedInstanceError(
                    f"truncated: element {tag:08X} declares {elem.length} bytes, has {actual}"
                )


def _dataset_offset(encoded: bytes) -> int:
    """Where the data set starts in a Part-10 byte string whose meta begins with its group length."""
    start = PREAMBLE_AND_PREFIX + GROUP_LENGTH_ELEMENT
    if len(encoded) < start or encoded[PREAMBLE_AND_PREFIX : PREAMBLE_AND_PREFIX + 4] != (
        b"\x02\x00\x00\x00"
    ):
        raise MalformedInstanceError("no file meta group length")
    group_length: int = struct.unpack_from("<I", encoded, start - 4)[0]
    return start + group_length


def _check_nothing_after_last_element(ds: Dataset, encoded: bytes) -> None:
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
        end = _dataset_offset(encoded)
    if end != len(encoded):
        raise MalformedInstanceError(
            f"truncated: {len(encoded) - end} bytes after the last element do not form one"
        )


def _check_inflated_size(encoded: bytes, limit: int) -> None:
    """Inflate a deflated data set in bounded steps, keeping nothing, and refuse it past ``limit``.

    pydicom would inflate the whole stream at once, so a few kilobytes of a deflate bomb could
    claim gigabytes; this costs one pass and at most ``INFLATE_STEP`` bytes at a time.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = encoded[_dataset_offset(encoded) :]
    total = 0
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, INFLATE_STEP))
            pending = inflater.unconsumed_tail
            if total > limit:
                raise InstanceTooLargeError(
                    f"deflated data set inflates beyond the limit of {limit} bytes "
                    f"({len(encoded)} bytes received)"
                )
    except zlib.error as exc:
        raise MalformedInstanceError(
            f"deflated data set is not a valid deflate stream: {exc}"
        ) from exc


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
    actual = len(ds.PixelData)
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
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian and max_inflated_bytes is not None:
        _check_inflated_size(encoded, max_inflated_bytes)
    try:
        ds = dcmread(BytesIO(encoded))
        transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
        _check_elements(ds, transfer_syntax)
        if not transfer_syntax.is_deflated:
            _check_nothing_after_last_element(ds, encoded)
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
