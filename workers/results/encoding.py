"""A result dataset to its DICOM file bytes: pydicom's bytes, its sequences encoded here.

Why it exists (measured, bench/bench_sr_encoding.py): pydicom's writer spends about 15 µs on
every element (a buffer per element, the writer lookup, the character set converted per text
element), and the findings SR of one image holds 2,600 elements in 500 sequences with 6 findings
present, 4,000 in 770 with all 14: 40 and 62 ms to write, nearly all in its content tree; written
here, 6 and 8 ms. The values of a dataset's sequences are encoded in Explicit VR Little Endian into
one buffer; pydicom then writes the file (preamble, file meta, top-level elements) from a copy of
the top level in which each sequence is a raw element holding those bytes, written as they are.

The same bytes: each item is written as ``pydicom.filewriter.write_dataset`` writes it: elements
in tag order, group lengths left out, items and sequences of defined length unless marked
undefined, each value formatted as pydicom's writer formats its VR, text in the item's character
set. A raw element is decoded where pydicom decodes it: where its item was not read in Explicit
VR Little Endian and in its present character set, and, for a raw sequence, also where an
ancestor was not (pydicom's ambiguous-VR walk decodes them). What this encoder does not format
itself (a raw element written as read, PN, AT, bytes, 64-bit numbers, date objects, a value of
an unusual type, text in character sets switched by code extensions, a value too long for its
length field) it hands to pydicom's ``write_data_element``; a dataset with an ambiguous VR, a
private element at its top, or another transfer syntax is written by pydicom whole. To be fast it
reads three private names of pydicom's ``Dataset`` (``_dict``, ``_character_set``,
``_parent_encoding``), which tests/workers/test_encoding.py holds to pydicom's own bytes for every
kind of result, as for made datasets covering each of these cases: on a pydicom upgrade, run it.
"""

import functools
import struct
from collections.abc import Sequence
from decimal import Decimal
from io import BytesIO
from struct import pack
from typing import Any, BinaryIO

from pydicom.charset import (
    convert_encodings,
    custom_encoders,
    default_encoding,
    need_tail_escape_sequence_encodings,
)
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32

_EXPLICIT_LITTLE = (False, True)
_SPECIFIC_CHARACTER_SET = BaseTag(0x00080005)
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = b"\xff\xff\xff\xff"
_DEFAULT_ENCODINGS = convert_encodings(default_encoding)
# The VRs formatted here, as pydicom's writers (pydicom.filewriter.writers) format them: strings
# in the default encoding with their padding (dates and times only as strings; pydicom formats
# date and time objects), text in the dataset's character set, numbers as strings or packed.
_STRING_PADDING = dict.fromkeys(("AE", "AS", "CS", "DA", "DT", "TM", "UR"), " ") | {"UI": "\0"}
_TEXT = frozenset({"SH", "LO", "ST", "LT", "UT", "UC"})
_NUMBER_STRINGS = frozenset({"DS", "IS"})
_NUMBER_FORMATS = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d"}
_MULTI = (MultiValue, list, tuple)


class _LeftToPydicomError(Exception):
    """The dataset holds something whose writing pydicom decides on the whole dataset."""


def encode(dataset: Dataset) -> bytes:
    """``dataset.save_as(buffer, enforce_file_format=True)``'s bytes, its sequences written here.

    ``dataset`` is changed as pydicom's writer changes it (raw elements it would decode are
    decoded in place), and no more.
    """
    buffer = BytesIO()
    write_part10(dataset, buffer)
    return buffer.getvalue()


def write_part10(dataset: Dataset, handle: BinaryIO) -> None:
    """Write :func:`encode`'s bytes into ``handle`` (a file: no copy of multi-MB pixel data in
    memory on the way)."""
    try:
        written = _with_encoded_sequences(dataset)
    except _LeftToPydicomError:
        written = dataset
    written.save_as(handle, enforce_file_format=True)


def _with_encoded_sequences(dataset: Dataset) -> Dataset:
    """A copy of ``dataset``'s top level in which every sequence is raw, holding its value's bytes.

    The copy is marked as read in Explicit VR Little Endian, so that pydicom writes it element by
    element as it is: its elements are those pydicom would write for ``dataset`` (decoded where
    it would decode them).
    """
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is None or file_meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian:
        raise _LeftToPydicomError
    decode = _decodes(dataset)
    charset = dataset.get(_SPECIFIC_CHARACTER_SET)
    encodings = (
        convert_encodings(charset.value or default_encoding) if charset else _DEFAULT_ENCODINGS
    )
    copy = Dataset()
    for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset decodes its elements
        element: DataElement | RawDataElement = dataset[tag] if decode else dataset.get_item(tag)
        if tag.is_private or tag.group in (0, 2) or element.VR in AMBIGUOUS_VR:
            raise _LeftToPydicomError
        if element.VR == "SQ" and isinstance(element, DataElement):
            out = bytearray()
            _Encoder(out).sequence_items(element.value, encodings, decode)
            length = 0xFFFFFFFF if element.is_undefined_length else len(out)
            element = RawDataElement(tag, "SQ", length, bytes(out), 0, False, True)
        copy[tag] = element
    copy.file_meta = file_meta  # pydicom's writer works on its own copy of it
    if getattr(dataset, "preamble", None) is not None:
        copy.preamble = dataset.preamble
    copy.set_original_encoding(False, True, copy._character_set)
    return copy


def _decodes(dataset: Dataset, has_charset: bool | None = None) -> bool:
    """Whether pydicom's writer decodes ``dataset``'s raw elements and walks its subtree for
    ambiguous VRs before writing it: ``write_dataset``'s own condition. ``has_charset`` (whether
    it has a Specific Character Set) saves pydicom's property its look-up, a fifth of the time
    this module spends on a findings SR: without one, the character set is the parent's."""
    if dataset.original_encoding != _EXPLICIT_LITTLE:
        return True
    if has_charset is None:
        has_charset = _SPECIFIC_CHARACTER_SET in dataset
    current = dataset._character_set if has_charset else dataset._parent_encoding
    return dataset.original_character_set != current


@functools.lru_cache(maxsize=64)
def _text_encoding(encodings: tuple[str, ...]) -> str | None:
    """The codec that encodes text as pydicom's ``encode_string`` does for ``encodings``, where
    that is one plain Python codec; None where pydicom switches between character sets (code
    extensions) or encodes in its own way, which is left to it."""
    if len(encodings) != 1:
        return None
    codec = encodings[0]
    if codec in custom_encoders or codec in need_tail_escape_sequence_encodings:
        return None
    return codec


@functools.lru_cache(maxsize=4096)
def _header(tag: int, vr: str) -> bytes:
    """Tag and VR as Explicit VR Little Endian writes them, with the reserved bytes of a long VR."""
    reserved = b"\0\0" if vr in EXPLICIT_VR_LENGTH_32 else b""
    return pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode() + reserved


class _Encoder:
    """Writes sequences into ``out`` as pydicom's ``write_data_element`` writes them."""

    def __init__(self, out: bytearray) -> None:
        self.out = out

    def sequence_items(self, items: Sequence[Dataset], encodings: list[str], walked: bool) -> None:
        """``walked``: an ancestor's raw sequences were decoded by pydicom's ambiguous-VR walk."""
        out = self.out
        for item in items:
            out += _ITEM
            out += _UNDEFINED
            start = len(out)
            self.dataset(item, encodings, walked)
            if getattr(item, "is_undefined_length_sequence_item", False):
                out += _ITEM_DELIMITER
            else:
                out[start - 4 : start] = pack("<I", len(out) - start)

    def dataset(self, dataset: Dataset, parent_encodings: list[str], walked: bool) -> None:
        has_charset = _SPECIFIC_CHARACTER_SET in dataset
        decode = _decodes(dataset, has_charset)
        walked = walked or decode
        encodings = parent_encodings
        if has_charset:
            encodings = convert_encodings(dataset.SpecificCharacterSet or default_encoding)
        text_encoding = _text_encoding(tuple(encodings))
        elements = dataset._dict  # pydicom's sorted(keys()) + get_item(): a third of the time
        for tag in sorted(elements, key=int):
            if tag & 0xFFFF == 0 and tag >> 16 > 6:
                continue  # group lengths are not written
            element = elements[tag]
            if element.is_raw:  # decoded where pydicom decodes it; a deferred value is read
                decoded = decode or (walked and element.VR == "SQ")
                element = dataset[tag] if decoded else dataset.get_item(tag)
            if element.VR in AMBIGUOUS_VR:
                raise _LeftToPydicomError
            self.element(element, encodings, text_encoding, walked)

    def element(
        self,
        element: DataElement | RawDataElement,
        encodings: list[str],
        text_encoding: str | None,
        walked: bool,
    ) -> None:
        out = self.out
        if isinstance(element, DataElement):
            vr = element.VR
            if vr == "SQ":
                self.sequence(element, encodings, walked)
                return
            value = (
                None if element.is_undefined_length else _value(vr, element.value, text_encoding)
            )
            if value is not None:
                long = vr in EXPLICIT_VR_LENGTH_32
                if long or len(value) <= 0xFFFF:
                    out += _header(int(element.tag), vr)
                    out += pack("<I" if long else "<H", len(value))
                    out += value
                    return
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_data_element(buffer, element, encodings)
        out += buffer.getvalue()

    def sequence(self, element: DataElement, encodings: list[str], walked: bool) -> None:
        out = self.out
        out += _header(int(element.tag), "SQ")
        out += _UNDEFINED
        start = len(out)
        self.sequence_items(element.value, encodings, walked)
        if element.is_undefined_length:
            out += _SEQUENCE_DELIMITER
        else:
            out[start - 4 : start] = pack("<I", len(out) - start)


def _value(vr: str, value: Any, text_encoding: str | None) -> bytes | None:
    """The value's bytes as pydicom's writer formats them for ``vr``, padded to an even length;
    None where it is left to pydicom."""
    if value is None:
        return b""
    try:
        padding = _STRING_PADDING.get(vr)
        if padding is not None:
            text = _joined(value)
            if text is None:
                return None
            return (text + padding if len(text) % 2 else text).encode(default_encoding)
        if vr in _TEXT:
            text = _joined(value)
            if text is None or text_encoding is None:
                return None
            data = text.encode(text_encoding)
            return data + b" " if len(data) % 2 else data
        if vr in _NUMBER_STRINGS:
            parts = value if isinstance(value, _MULTI) else (value,)
            if not all(isinstance(x, str | int | float | Decimal) for x in parts):
                return None
            text = "\\".join(
                x.original_string if hasattr(x, "original_string") else str(x) for x in parts
            )
            return (text + " " if len(text) % 2 else text).encode(default_encoding)
        number_format = _NUMBER_FORMATS.get(vr)
        if number_format is not None:
            if isinstance(value, int | float):
                return pack(f"<{number_format}", value)
            if isinstance(value, MultiValue | list) and vr != "SS":  # SS: see LUT descriptors
                return pack(f"<{len(value)}{number_format}", *value)
            if isinstance(value, str) and not value:
                return b""
    except (UnicodeError, TypeError, ValueError, OverflowError, struct.error):
        return None  # pydicom's writer says what is wrong (or writes what it can)
    return None


def _joined(value: Any) -> str | None:
    """A string value as pydicom joins it (values separated by backslashes); None if not strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, _MULTI) and all(isinstance(x, str) for x in value):
        return "\\".join(value)
    return None
