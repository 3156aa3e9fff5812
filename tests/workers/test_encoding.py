"""``workers.results.encoding.encode`` against pydicom's writer, the oracle: the same bytes.

For every result RadLight writes (a job's SCs, SEG, GSPS and findings SR with few or many findings
and regions, one or two images; an amended report; the not-analysed and grounded reports; SRs
copying sequences read from a file, in either VR encoding; non-ASCII text), and for datasets made
to hold every VR, empty values, undefined lengths, other character sets and what the encoder leaves
to pydicom (an element it does not format, a dataset it does not write at all). Each dataset is
written by pydicom (a deep copy, so that nothing the encoder does to it can hide a difference),
then by ``encode``, then by pydicom again.
"""

import copy
import datetime
import io
from collections.abc import Callable
from pathlib import Path
from struct import pack

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from radlight.uids import deterministic_uid
from tests.dicom_io import to_bytes
from tests.grounding_study import report_sr
from tests.workers.test_sr import (
    ALGORITHM,
    WHEN,
    findings_report,
    header_copy,
    image_findings,
    not_analysed_report,
    stand_in,
)
from tests.workers.test_sr_document import grounded_sentences, source_as_read
from workers.analysis import JobIdentity, ResultOptions, build_results
from workers.results import encoding, grounded_sr, sr
from workers.results.common import AlgorithmInfo
from workers.results.regions import ImageFindings


def assert_encodes_as_pydicom(dataset: Dataset) -> bytes:
    oracle = to_bytes(copy.deepcopy(dataset))
    assert encoding.encode(dataset) == oracle
    assert to_bytes(dataset) == oracle  # and the dataset was left as pydicom would leave it
    return oracle


@pytest.fixture(scope="module")
def sources(real_dicom_files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in real_dicom_files]


def few(findings: ImageFindings, count: int) -> ImageFindings:
    return ImageFindings(findings.source, findings.display, findings.findings[:count])


def one_study(sources: list[Dataset]) -> list[Dataset]:
    second = header_copy(sources[1], StudyInstanceUID=sources[0].StudyInstanceUID)
    second.PixelData = sources[1].PixelData
    return [sources[0], second]


@pytest.mark.parametrize(
    ("images", "threshold"),
    [(1, 0.5), (1, 0.0), (2, 0.5), (3, 0.5)],
    ids=["14-findings-half-present", "14-all-present", "two-images", "three-findings"],
)
def test_every_result_of_a_job_encodes_as_pydicom_writes_it(
    sources: list[Dataset], images: int, threshold: float
) -> None:
    """SCs (lossless and JPEG), SEG, GSPS and the findings SR of jobs of different sizes."""
    study = one_study(sources)
    findings = [image_findings(source) for source in study[: min(images, 2)]]
    if images == 3:  # a few findings: three of the fourteen
        findings = [few(findings[0], 3)]
    options = ResultOptions(
        max_overlays_per_image=1,
        default_threshold=threshold,
        segmentation=True,
        presentation_state=True,
        jpeg_copies=True,
    )
    job = JobIdentity(
        job_id=7,
        study_instance_uid=str(study[0].StudyInstanceUID),
        input_hash=f"encoding-{images}-{threshold}",
        created_at=WHEN,
    )
    built = build_results(job, ALGORITHM, findings, options)
    assert {result.kind.value for result in built} >= {"findings_sr", "summary_sc"}
    for result in built:
        assert_encodes_as_pydicom(result.dataset)


def test_an_amended_report_encodes_as_pydicom_writes_it(sources: list[Dataset]) -> None:
    """Version 2, amending a report read back from its file (as the pipeline reads it)."""
    first = findings_report([image_findings(sources[0])])
    previous = pydicom.dcmread(io.BytesIO(to_bytes(first)))
    amended = sr.build_findings_report(
        images=[image_findings(sources[0], offset=-0.05)],
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test-encoding", "series", "v2"),
        sop_instance_uid=deterministic_uid("test-encoding", "v2"),
        series_number=9902,
        instance_number=1,
        evidence=[stand_in(sources[0], "sc")],
        content_datetime=WHEN,
        version=2,
        amends=previous,
    )
    assert "PredecessorDocumentsSequence" in amended
    assert_encodes_as_pydicom(amended)


def test_the_not_analysed_report_encodes_as_pydicom_writes_it(sources: list[Dataset]) -> None:
    other = header_copy(sources[1], SOPInstanceUID=deterministic_uid("test-encoding", "other"))
    for keyword in ("Rows", "Columns"):
        delattr(other, keyword)
    reasons = {
        str(sources[1].SOPInstanceUID): "view position LL is lateral; the model reads frontal",
        str(other.SOPInstanceUID): "the instance has no pixel data",
    }
    assert_encodes_as_pydicom(not_analysed_report([sources[1], other], reasons))


def test_the_grounded_report_encodes_as_pydicom_writes_it(sources: list[Dataset]) -> None:
    source = sources[0]
    report = grounded_sr.build_grounded_report(
        source=source,
        sentences=grounded_sentences(),
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test-encoding", "grounded-series"),
        sop_instance_uid=deterministic_uid("test-encoding", "grounded"),
        series_number=9910,
        instance_number=1,
        report=report_sr(source),
        evidence=[stand_in(source, "grounded-sc")],
        content_datetime=WHEN,
    )
    assert_encodes_as_pydicom(report)


@pytest.mark.parametrize("implicit_vr", [True, False], ids=["implicit", "explicit"])
def test_sequences_copied_from_a_file_encode_as_pydicom_writes_them(
    sources: list[Dataset], implicit_vr: bool
) -> None:
    """The report copies the source's patient and study sequences, their items read from a file
    and still raw: pydicom decodes them (implicit VR) or writes them as read (explicit VR)."""
    source = source_as_read(sources[0], implicit_vr)
    report = findings_report([image_findings(source)])
    assert report.ProcedureCodeSequence[0].original_encoding == (implicit_vr, True)
    written = pydicom.dcmread(io.BytesIO(assert_encodes_as_pydicom(report)))
    assert written.ProcedureCodeSequence[0].EquivalentCodeSequence[0].CodeValue == "36572-6"


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192"])
def test_non_ascii_text_encodes_as_pydicom_writes_it(
    sources: list[Dataset], monkeypatch: pytest.MonkeyPatch, charset: str | None
) -> None:
    """The SR takes the source's character set (pydicom's default, Latin-1, where it has none);
    text in the content tree (an algorithm's name) is encoded here in it, at the top (a
    patient's name, a study description) by pydicom."""
    changes = {"PatientName": "Müller^Jürgen", "StudyDescription": "Thorax p.a. Übersicht"}
    if charset is not None:
        changes["SpecificCharacterSet"] = charset
    source = header_copy(sources[0], **changes)
    source.PixelData = sources[0].PixelData
    algorithm = AlgorithmInfo(name="Modèle-Poumon", version="1.0", sha256=ALGORITHM.sha256)
    report = sr.build_findings_report(
        images=[image_findings(source)],
        algorithm=algorithm,
        series_instance_uid=deterministic_uid("test-encoding", "text-series"),
        sop_instance_uid=deterministic_uid("test-encoding", "text"),
        series_number=9902,
        instance_number=1,
        content_datetime=WHEN,
    )
    assert report.get("SpecificCharacterSet") == charset
    recorded = fallen_back(monkeypatch)
    written = assert_encodes_as_pydicom(report)
    codec = "utf-8" if charset == "ISO_IR 192" else "latin-1"
    assert "Modèle-Poumon".encode(codec) in written
    assert not {"LO", "SH", "UT"} & recorded()


# -- made datasets -----------------------------------------------------------------------------

# (keyword, VR, value): one item each, so that a keyword may appear with several values.
EVERY_VR: list[tuple[str, str, object]] = [
    ("RetrieveAETitle", "AE", "STORE1"),
    ("RetrieveAETitle", "AE", ["A1", "B22"]),
    ("PatientAge", "AS", "042Y"),
    ("DimensionIndexPointer", "AT", 0x00100010),
    ("FrameIncrementPointer", "AT", [0x00181063, 0x00181065]),
    ("Modality", "CS", "OT"),
    ("ImageType", "CS", ["DERIVED", "PRIMARY", "X"]),
    ("StudyDate", "DA", "20240506"),
    ("StudyDate", "DA", datetime.date(2024, 5, 6)),
    ("SliceThickness", "DS", "1.5"),
    ("PixelSpacing", "DS", [0.5, 0.25]),
    ("PatientSize", "DS", 3),
    ("AcquisitionDateTime", "DT", "20240506070809.123"),
    ("EventTimeOffset", "FD", 0.1),
    ("TimeRange", "FD", [0.5, -1.25]),
    ("ExaminedBodyThickness", "FL", 0.1),
    ("ExaminedBodyThickness", "FL", [1.5, 2.5, 3.5]),
    ("StageNumber", "IS", 7),
    ("ReferencedFrameNumber", "IS", [1, 22]),
    ("InstitutionName", "LO", "Hôpital 3"),
    ("AdmittingDiagnosesDescription", "LO", ["a", "bc"]),
    ("ExtendedCodeMeaning", "LT", "line one\r\nline two"),
    ("RecordKey", "OB", b"\x01\x02\x03"),
    ("DoublePointCoordinatesData", "OD", pack("<2d", 1.5, 2.5)),
    ("VerticesOfThePolygonalOutline", "OF", pack("<2f", 1.5, 2.5)),
    ("LongPrimitivePointIndexList", "OL", pack("<2I", 1, 2)),
    ("SelectorOVValue", "OV", pack("<Q", 7)),
    ("RedPaletteColorLookupTableData", "OW", b"\x01\x00\x02\x00"),
    ("ReferringPhysicianName", "PN", "Doe^Jane"),
    ("AccessionNumber", "SH", "ACC1"),
    ("ReferencePixelX0", "SL", -5),
    ("ReferencePixelX0", "SL", [1, -2]),
    ("TagAngleSecondAxis", "SS", -3),
    ("TagAngleSecondAxis", "SS", [1, -2]),
    ("InstitutionAddress", "ST", "Street 1"),
    ("SelectorSVValue", "SV", [-7, 8]),
    ("StudyTime", "TM", "070809.123"),
    ("StudyTime", "TM", datetime.time(7, 8, 9, 123000)),
    ("LongCodeValue", "UC", "a long code value"),
    ("ReferencedSOPClassUIDInFile", "UI", "1.2.3.4"),
    ("RelatedGeneralSOPClassUID", "UI", ["1.2.3", "1.2.34"]),
    ("OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity", "UL", 5),
    ("SelectorUNValue", "UN", b"\x01\x02\x03"),
    ("CodingSchemeURL", "UR", "http://example.com/x"),
    ("FileSetConsistencyFlag", "US", 5),
    ("FileSetConsistencyFlag", "US", [1, 2]),
    ("PrivateDataElementDescription", "UT", "unlimited text é"),
    ("FileOffsetInContainer", "UV", 9),
]
FORMATTED_HERE = {"AE", "AS", "CS", "DS", "FD", "FL", "IS", "LO", "LT", "SH", "UC", "UI", "UT"}
LEFT_TO_PYDICOM = {"AT", "OB", "OD", "OF", "OL", "OV", "OW", "PN", "SV", "UN", "UV"}


def item_with(keyword: str, vr: str, value: object) -> Dataset:
    item = Dataset()
    item.add_new(keyword, vr, value)
    return item


def document(*items: Dataset, charset: str | None = None) -> Dataset:
    """A minimal dataset with ``items`` in its Content Sequence, ready to be written to a file."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = ComprehensiveSRStorage
    dataset.SOPInstanceUID = generate_uid(entropy_srcs=["test-encoding", str(len(items))])
    if charset is not None:
        dataset.SpecificCharacterSet = charset
    dataset.ContentSequence = list(items)
    return dataset


def fallen_back(monkeypatch: pytest.MonkeyPatch) -> Callable[[], set[str]]:
    """Records the VR of every element the encoder hands to pydicom's ``write_data_element``."""
    vrs: set[str] = set()
    write = pydicom.filewriter.write_data_element

    def recording(fp: object, element: object, encodings: object = None) -> None:
        vrs.add(str(getattr(element, "VR", None)))
        write(fp, element, encodings)  # type: ignore[arg-type]

    monkeypatch.setattr(encoding, "write_data_element", recording)
    return lambda: set(vrs)


def test_every_vr_and_empty_values_encode_as_pydicom_writes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each VR with one and several values and empty; what the encoder does not format itself
    (bytes, PN, AT, 64-bit numbers, date objects, a multi-valued SS) is written by pydicom."""
    items = [item_with(keyword, vr, value) for keyword, vr, value in EVERY_VR]
    items += [item_with(keyword, vr, None) for keyword, vr, _ in EVERY_VR]
    items[0].add_new(0x00080000, "UL", 1234)  # a group length: not written
    recorded = fallen_back(monkeypatch)
    assert_encodes_as_pydicom(document(*items))
    assert LEFT_TO_PYDICOM | {"DA", "TM", "SS"} <= recorded()
    assert not FORMATTED_HERE & recorded()


def test_undefined_lengths_and_nesting_encode_as_pydicom_writes_them() -> None:
    inner = item_with("CodeValue", "SH", "ODD")
    undefined_item = item_with("CodeMeaning", "LO", "an item of undefined length")
    undefined_item.is_undefined_length_sequence_item = True
    outer = item_with("ConceptNameCodeSequence", "SQ", Sequence([inner, undefined_item]))
    outer.add_new("ContentSequence", "SQ", Sequence([]))  # empty
    outer.add_new("ReferencedSOPSequence", "SQ", Sequence([Dataset()]))  # an empty item
    outer["ConceptNameCodeSequence"].is_undefined_length = True
    dataset = document(outer)
    dataset["ContentSequence"].is_undefined_length = True
    assert_encodes_as_pydicom(dataset)


def test_declared_character_sets_encode_as_pydicom_writes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Text in the document's character set (UTF-8) and in an item's own (Latin-1) is encoded
    here; text in an item whose character sets switch by code extensions (ISO 2022, Japanese)
    is written by pydicom."""
    latin = item_with("CodeMeaning", "LO", "Modèle pulmonaire")
    latin.SpecificCharacterSet = "ISO_IR 100"
    japanese = item_with("CodeMeaning", "LO", "山田 太郎")
    japanese.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    utf8 = item_with("CodeMeaning", "LO", "模型 Modèle")
    utf8.add_new("CodeValue", "SH", "CODE1")
    utf8.ConceptNameCodeSequence = [latin, japanese]
    recorded = fallen_back(monkeypatch)
    written = assert_encodes_as_pydicom(document(utf8, charset="ISO_IR 192"))
    assert "模型 Modèle".encode() in written
    assert "Modèle pulmonaire".encode("latin-1") in written
    assert recorded() == {"LO"}  # the ISO 2022 text alone


def test_a_value_too_long_for_its_length_field_is_left_to_pydicom() -> None:
    """pydicom writes it as UN (with its warning); so does the encoder, through pydicom."""
    dataset = document(item_with("FileSetConsistencyFlag", "US", list(range(40000))))
    with pytest.warns(UserWarning, match="64 kByte"):
        oracle = to_bytes(copy.deepcopy(dataset))
    with pytest.warns(UserWarning, match="64 kByte"):
        assert encoding.encode(dataset) == oracle


def test_an_ambiguous_vr_leaves_the_whole_dataset_to_pydicom() -> None:
    """pydicom corrects an ambiguous VR from the item's ancestors; the encoder does not try."""
    item = item_with("SmallestImagePixelValue", "US or SS", 7)
    dataset = document(item)
    dataset.PixelRepresentation = 1
    with pytest.raises(encoding._LeftToPydicomError):
        encoding._with_encoded_sequences(copy.deepcopy(dataset))
    written = pydicom.dcmread(io.BytesIO(assert_encodes_as_pydicom(dataset)))
    assert written.ContentSequence[0]["SmallestImagePixelValue"].VR == "SS"


def test_another_transfer_syntax_leaves_the_whole_dataset_to_pydicom() -> None:
    dataset = document(item_with("CodeValue", "SH", "ODD"))
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    with pytest.raises(encoding._LeftToPydicomError):
        encoding._with_encoded_sequences(dataset)
    assert_encodes_as_pydicom(dataset)


def explicit_little(tag: int, vr: str, value: bytes) -> bytes:
    """One element in Explicit VR Little Endian, written by hand."""
    head = pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr == "SQ":
        return head + b"\0\0" + pack("<I", len(value)) + value
    return head + pack("<H", len(value)) + value


def item_bytes(*elements: bytes) -> bytes:
    content = b"".join(elements)
    return b"\xfe\xff\x00\xe0" + pack("<I", len(content)) + content


def test_a_raw_sequence_in_an_item_read_as_written_is_decoded_below_a_decoded_ancestor() -> None:
    """An item read in Explicit VR Little Endian keeps its raw elements; placed in a made
    document, its raw sequence (whose bytes hold a group length) is decoded by pydicom's
    ambiguous-VR walk from the document, so the group length is not written, while its other
    raw elements are written as read (a code value with two trailing spaces)."""
    inner = item_bytes(
        explicit_little(0x00080000, "UL", pack("<I", 10)),
        explicit_little(0x00080100, "SH", b"B2"),
    )
    outer = item_bytes(
        explicit_little(0x00080100, "SH", b"A1  "),
        explicit_little(0x00080121, "SQ", inner),
    )
    read = pydicom.dcmread(io.BytesIO(explicit_little(0x0040A043, "SQ", outer)), force=True)
    item = read.ConceptNameCodeSequence[0]
    assert item.original_encoding == (False, True)
    assert item.get_item(0x00080121).is_raw
    data = assert_encodes_as_pydicom(document(item))
    assert b"SH\x04\x00A1  " in data
    written = pydicom.dcmread(io.BytesIO(data))
    assert "CommandGroupLength" not in written.ContentSequence[0].EquivalentCodeSequence[0]
    assert len(written.ContentSequence[0].EquivalentCodeSequence[0]) == 1


def test_an_item_whose_character_set_changed_since_it_was_read_is_decoded() -> None:
    """pydicom decodes a read item's raw text in the character set it was read in and encodes
    it in the item's present one; with the character set unchanged, it writes the raw bytes."""
    outer = item_bytes(
        explicit_little(0x00080005, "CS", b"ISO_IR 100"),
        explicit_little(0x00080104, "LO", "Modèle  ".encode("latin-1")),
    )
    read = pydicom.dcmread(io.BytesIO(explicit_little(0x0040A043, "SQ", outer)), force=True)
    unchanged = read.ConceptNameCodeSequence[0]
    changed = copy.deepcopy(unchanged)
    changed.SpecificCharacterSet = "ISO_IR 192"
    assert changed.get_item(0x00080104).is_raw
    data = assert_encodes_as_pydicom(document(unchanged, changed))
    assert b"LO\x08\x00Mod\xe8le  " in data  # unchanged: as read
    assert b"LO\x08\x00Mod\xc3\xa8le " in data  # changed: decoded, in UTF-8, padded
