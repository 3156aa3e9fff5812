"""Regression tests for what the hostile-DICOM fuzz test found in the header checks.

Each case was once a crash (an exception the C-STORE handler caught only as "unexpected", answering
0x0110 as if the node were at fault), or an instance stored although its bytes disagree with what
it says about itself. They are built from the real files, read at test time.
"""

import struct
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from dicom_node.headers import InstanceHeader, read_header
from radlight.errors import InstanceTooLargeError, MalformedInstanceError
from tests.dicom_node import hostile

LIMIT = 4 * 1024 * 1024
# pydicom warns (UserWarning) about much of this input before our checks refuse it.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _read(data: bytes, source: bytes) -> InstanceHeader:
    ds = pydicom.dcmread(BytesIO(source), stop_before_pixels=True)
    return read_header(
        data,
        expected_sop_class_uid=str(ds.SOPClassUID),
        expected_sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=hostile.split(data).transfer_syntax,
        max_inflated_bytes=LIMIT,
    )


@pytest.fixture
def source(real_dicom_files: list[Path]) -> bytes:
    return real_dicom_files[0].read_bytes()


def test_the_real_file_and_its_explicit_and_deflated_copies_are_accepted(source: bytes) -> None:
    assert _read(source, source).transfer_syntax_uid == "1.2.840.10008.1.2"
    assert _read(hostile.explicit_copy(source).join(), source).transfer_syntax_uid == (
        ExplicitVRLittleEndian
    )
    ds = pydicom.dcmread(BytesIO(source))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = BytesIO()
    ds.save_as(deflated, implicit_vr=False, little_endian=True, enforce_file_format=True)
    assert _read(deflated.getvalue(), source).transfer_syntax_uid == DeflatedExplicitVRLittleEndian


def test_a_deflate_bomb_is_refused_as_too_large_without_inflating_it_whole(source: bytes) -> None:
    bomb = hostile.deflate_bomb(hostile.explicit_copy(source), 64 * LIMIT)
    assert len(bomb) < LIMIT
    with pytest.raises(InstanceTooLargeError, match="inflates beyond the limit"):
        _read(bomb, source)


def test_deflated_syntax_over_data_that_is_not_deflated(source: bytes) -> None:
    data = hostile.with_meta_syntax(hostile.split(source), DeflatedExplicitVRLittleEndian)
    with pytest.raises(MalformedInstanceError, match="not a valid deflate stream"):
        _read(data, source)  # was zlib.error, answered 0x0110


@pytest.mark.parametrize("vr", [b"QO", b"Zz", b"\x85B", b"\x00\x00"])
def test_an_invalid_vr_is_malformed(source: bytes, vr: bytes) -> None:
    # Unknown letters were a NotImplementedError; non-letters made pydicom silently switch to
    # implicit VR mid data set, and the instance was stored.
    data = hostile.bad_vr(hostile.explicit_copy(source), 3, vr)
    with pytest.raises(MalformedInstanceError):
        _read(data, source)


def test_explicit_data_declared_implicit_is_malformed(source: bytes) -> None:
    data = hostile.with_meta_syntax(hostile.explicit_copy(source), hostile.NATIVE)
    with pytest.raises(MalformedInstanceError, match="explicit VR but the transfer syntax"):
        _read(data, source)  # was stored, labelled implicit, unreadable by others


def test_implicit_data_declared_explicit_is_malformed(source: bytes) -> None:
    data = hostile.with_meta_syntax(hostile.split(source), ExplicitVRLittleEndian)
    with pytest.raises(MalformedInstanceError):
        _read(data, source)


@pytest.mark.parametrize(("element", "value"), [(0x0010, 0), (0x0011, 1), (0x0010, 512)])
def test_pixel_data_longer_than_rows_and_columns_say_is_malformed(
    source: bytes, element: int, value: int
) -> None:
    data = hostile.with_us_value(hostile.split(source), 0x0028, element, value)
    with pytest.raises(MalformedInstanceError, match=r"Pixel Data|impossible"):
        _read(data, source)  # was accepted: only a short Pixel Data was refused


@pytest.mark.parametrize("tail", [2, 6])
def test_a_tail_too_short_for_an_element_is_malformed(source: bytes, tail: int) -> None:
    part = hostile.split(source)
    first = hostile.elements(part.body, explicit=False)[0]
    body = part.body[: first.value_offset + first.length + tail]  # one element, then a stub
    with pytest.raises(MalformedInstanceError, match="after the last element"):
        _read(part.join(body), source)  # pydicom dropped the stub silently


def test_a_length_that_merges_bits_stored_with_high_bit_is_malformed(source: bytes) -> None:
    # Found by the fuzz test: Bits Stored's length grown by exactly the next element's size
    # gives a well-formed data set with a 6-valued Bits Stored and no High Bit; it was stored.
    part = hostile.split(source)
    found = hostile.elements(part.body, explicit=False)
    index = next(i for i, e in enumerate(found) if (e.group, e.element) == (0x0028, 0x0101))
    merged = found[index].length + 8 + found[index + 1].length
    body = bytearray(part.body)
    offset = found[index].length_offset
    body[offset : offset + 4] = struct.pack("<I", merged)
    with pytest.raises(MalformedInstanceError, match="pixel description"):
        _read(part.join(bytes(body)), source)
