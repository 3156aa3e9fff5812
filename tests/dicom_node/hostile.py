"""Hostile variants of real Part-10 files, made byte by byte for the fuzz test.

Each function takes the bytes of a real file (read at test time from the shared assets, never
copied) and returns a Part-10 byte string whose file meta still parses (the sender needs it to
pick a presentation context) while the data set after it is broken in one specific way.
"""

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import VR

# VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})
KNOWN_VRS = frozenset(str(vr).encode() for vr in VR if len(str(vr)) == 2)
PRIVATE_CREATOR_TAG = (0x0009, 0x0010)
PRIVATE_DATA_TAG = (0x0009, 0x1000)


@dataclass(frozen=True)
class Element:
    """Where one top-level element sits in the body (offsets from the body's start)."""

    group: int
    element: int
    header_offset: int
    length_offset: int
    length_size: int  # 2 (short explicit VR) or 4
    value_offset: int
    length: int
    vr_offset: int | None  # explicit VR only


@dataclass(frozen=True)
class Part10:
    """A file split into its preamble + file meta, and the encoded data set (``body``)."""

    meta: bytes
    body: bytes
    transfer_syntax: str
    sop_class: str

    def join(self, body: bytes | None = None) -> bytes:
        return self.meta + (self.body if body is None else body)


def split(data: bytes) -> Part10:
    handle = BytesIO(data)
    read_preamble(handle, force=False)
    meta = _read_file_meta_info(handle)  # leaves the handle at the data set's first byte
    offset = handle.tell()
    return Part10(
        data[:offset],
        data[offset:],
        str(meta.TransferSyntaxUID),
        str(meta.MediaStorageSOPClassUID),
    )


def elements(body: bytes, *, explicit: bool) -> list[Element]:
    """Top-level elements of a little-endian body without sequences of undefined length."""
    found: list[Element] = []
    position = 0
    while position + 8 <= len(body):
        group, element = struct.unpack("<HH", body[position : position + 4])
        if explicit:
            vr = body[position + 4 : position + 6]
            if vr in LONG_VRS:
                length = struct.unpack("<I", body[position + 8 : position + 12])[0]
                found.append(
                    Element(group, element, position, position + 8, 4, position + 12, length, 4)
                )
                position += 12 + length
                continue
            length = struct.unpack("<H", body[position + 6 : position + 8])[0]
            found.append(
                Element(group, element, position, position + 6, 2, position + 8, length, 4)
            )
        else:
            length = struct.unpack("<I", body[position + 4 : position + 8])[0]
            found.append(
                Element(group, element, position, position + 4, 4, position + 8, length, None)
            )
        position += 8 + length
    return found


def with_meta_syntax(part: Part10, syntax: str) -> bytes:
    """The meta declares ``syntax`` (same length UIDs padded as DICOM does); the body is unchanged."""
    from pydicom import dcmread
    from pydicom.filewriter import write_file_meta_info

    meta = dcmread(BytesIO(part.meta), stop_before_pixels=True, force=True).file_meta
    meta.TransferSyntaxUID = UID(syntax)
    out = DicomBytesIO()
    out.write(part.meta[:132])  # preamble and DICM
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + part.body


def explicit_copy(data: bytes) -> Part10:
    """The same data set re-encoded in Explicit VR Little Endian (for VR mutations)."""
    from pydicom import dcmread

    ds = dcmread(BytesIO(data))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return split(out.getvalue())


def truncated(part: Part10, cut: int) -> bytes:
    """The body cut inside an element (never on an element boundary), at ``cut`` or just after."""
    starts = {e.header_offset for e in elements(part.body, explicit=False)} | {len(part.body)}
    cut = max(1, min(cut, len(part.body) - 1))
    if cut in starts:
        cut += 1 if cut + 1 < len(part.body) else -1
    return part.join(part.body[:cut])


def wrong_length(part: Part10, index: int, new_length: int, *, explicit: bool) -> bytes:
    """Element ``index``'s length field says ``new_length``, which ends inside an element.

    A length that ends exactly where a later element starts merges the elements between into one
    value: a well-formed data set whose values are wrong, which only a check of each attribute's
    meaning could notice (see test_headers_hostile for the ones the node does check).
    """
    found = elements(part.body, explicit=explicit)
    target = found[index]
    limit = 0xFFFF if target.length_size == 2 else 0xFFFFFFFE
    boundaries = {e.header_offset - target.value_offset for e in found} | {
        len(part.body) - target.value_offset
    }
    new_length = new_length % (limit + 1)
    while new_length in boundaries:
        new_length = (new_length + 1) % (limit + 1)
    fmt = "<H" if target.length_size == 2 else "<I"
    body = bytearray(part.body)
    body[target.length_offset : target.length_offset + target.length_size] = struct.pack(
        fmt, new_length
    )
    return part.join(bytes(body))


def bad_vr(part: Part10, index: int, vr: bytes) -> bytes:
    """Element ``index`` of an explicit-VR body carries ``vr``, which is not a DICOM VR."""
    assert vr not in KNOWN_VRS
    assert len(vr) == 2
    target = elements(part.body, explicit=True)[index]
    assert target.vr_offset is not None
    body = bytearray(part.body)
    start = target.header_offset + target.vr_offset
    body[start : start + 2] = vr
    return part.join(bytes(body))


def with_us_value(part: Part10, group: int, element: int, value: int) -> bytes:
    """An implicit-VR body whose US element (group, element) holds ``value`` (Rows, Columns)."""
    target = next(
        e for e in elements(part.body, explicit=False) if (e.group, e.element) == (group, element)
    )
    body = bytearray(part.body)
    body[target.value_offset : target.value_offset + 2] = struct.pack("<H", value)
    return part.join(bytes(body))


def _header(group: int, element: int, vr: bytes, length: int) -> bytes:
    """An explicit VR little endian element header."""
    if vr in LONG_VRS:
        return struct.pack("<HH", group, element) + vr + b"\0\0" + struct.pack("<I", length)
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", length)


def _private_creator() -> bytes:
    creator = b"RADLIGHT FUZZ "  # even length
    return _header(*PRIVATE_CREATOR_TAG, b"LO", len(creator)) + creator


def _insert_private(part: Part10, encoded: bytes, *, explicit: bool) -> bytes:
    """``encoded`` elements placed in tag order (before group 0x0010) of the body."""
    position = next(
        e.header_offset for e in elements(part.body, explicit=explicit) if e.group > 0x0009
    )
    return part.body[:position] + encoded + part.body[position:]


def huge_private_tag(part: Part10, size: int) -> bytes:
    """An explicit-VR body with a private OB element of ``size`` real bytes."""
    size += size % 2
    encoded = _private_creator() + _header(*PRIVATE_DATA_TAG, b"OB", size) + b"\x5a" * size
    return part.join(_insert_private(part, encoded, explicit=True))


def private_tag_declaring(part: Part10, declared: int) -> bytes:
    """An explicit-VR body with a private OB element that declares ``declared`` bytes but has 16."""
    declared = max(declared - declared % 2, 1 << 20)
    encoded = _private_creator() + _header(*PRIVATE_DATA_TAG, b"OB", declared) + b"\0" * 16
    return part.join(_insert_private(part, encoded, explicit=True))


def deflate_bomb(part: Part10, inflated_size: int) -> bytes:
    """Deflated Explicit VR LE whose body inflates to at least ``inflated_size`` bytes.

    ``part`` must be explicit VR LE; a private OB element of zeros makes up the size, so the
    deflated stream is about a thousandth of what it inflates to.
    """
    inflated_size += inflated_size % 2
    header = _header(*PRIVATE_DATA_TAG, b"OB", inflated_size)
    position = next(e.header_offset for e in elements(part.body, explicit=True) if e.group > 9)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [compressor.compress(part.body[:position] + _private_creator() + header)]
    zeros = bytes(1 << 20)
    remaining = inflated_size
    while remaining > 0:
        chunk = zeros[: min(remaining, len(zeros))]
        chunks.append(compressor.compress(chunk))
        remaining -= len(chunk)
    chunks.append(compressor.compress(part.body[position:]))
    chunks.append(compressor.flush())
    deflated = b"".join(chunks)
    deflated += b"\0" * (len(deflated) % 2)
    return with_meta_syntax(
        Part10(part.meta, deflated, part.transfer_syntax, part.sop_class),
        str(DeflatedExplicitVRLittleEndian),
    )


WRONG_SYNTAXES = (
    str(ExplicitVRLittleEndian),
    str(ExplicitVRBigEndian),
    str(DeflatedExplicitVRLittleEndian),
)
NATIVE = str(ImplicitVRLittleEndian)
