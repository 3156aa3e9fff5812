"""The SR documents (findings report and not-analysed report) on the two real NIH chest X-rays.

Findings, heatmaps and regions are synthetic; the sources are real. Every document is written to
bytes and read back with pydicom in strict mode and with highdicom, validated with dciodvfy, and
rendered with dcmtk's dsr2html, whose HTML must name every finding and its score.
"""

import copy
import datetime
import hashlib
import html
import io
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.uid import ComprehensiveSRStorage

import radlight
from models.labels import CHEST_XRAY14_LABELS, LOCAL
from radlight.errors import NotAnalysableError
from radlight.uids import deterministic_uid
from tests.dicom_io import strict_reading, to_bytes
from workers.imaging import check_age_range, check_frontal_chest
from workers.results.common import (
    AlgorithmInfo,
    FindingScore,
    tolerate_single_component_names,
)
from workers.results.regions import FindingResult, HeatmapRegion, ImageFindings, heatmap_region
from workers.results.sr import (
    ABSENT,
    AGE_OUT_OF_RANGE,
    AGE_UNKNOWN,
    LATERAL_VIEW,
    NOT_ANALYSED_SERIES_DESCRIPTION,
    NOT_CHEST_RADIOGRAPH,
    OTHER_REASON,
    PRESENT,
    REASON_NOT_ANALYSED,
    REPORT_SERIES_DESCRIPTION,
    THRESHOLD_VALUE,
    UNREADABLE_IMAGE,
    UNSUPPORTED_IMAGE,
    build_findings_report,
    build_not_analysed_report,
    not_analysed_reason_code,
)

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
ALGORITHM = AlgorithmInfo(
    name="CheXNet-DenseNet121",
    version="1.2.3",
    sha256=hashlib.sha256(b"radlight test model").hexdigest(),
)
THRESHOLD = 0.5
REPORT_UID = deterministic_uid("test-sr", "report")
LATERAL_REASON = "view position LL is lateral; the model reads frontal views"
AGE_REASON = "patient age 007Y is outside this model's range 18\u201399 y"


# -- helpers -----------------------------------------------------------------------------------


def read_strict(data: bytes) -> pydicom.Dataset:
    """Read ``data`` in strict mode, converting every element so that each value is validated."""
    with strict_reading():
        dataset = pydicom.dcmread(io.BytesIO(data))
        converted = [element.value for element in dataset.iterall()]
    assert converted
    return dataset


def tool(name: str) -> str:
    """A dicom3tools/dcmtk executable; the test fails (not skips) where it is missing."""
    executable = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(executable).exists():
        pytest.fail(f"{name} is needed to check the SR documents")
    return executable


def assert_dciodvfy_clean(data: bytes, path: Path) -> None:
    path.write_bytes(data)
    completed = subprocess.run(
        [tool("dciodvfy"), "-new", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (completed.stdout + completed.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    report = "\n".join(lines)
    assert not errors, f"dciodvfy reported errors:\n{report}"


def dsr2html_text(data: bytes, path: Path) -> str:
    """dsr2html's rendering of ``data`` as plain text (tags removed, entities decoded)."""
    path.write_bytes(data)
    completed = subprocess.run(
        [tool("dsr2html"), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert "<html" in completed.stdout.lower()
    text = html.unescape(re.sub(r"<[^>]+>", " ", completed.stdout))
    return " ".join(text.split())


def blob(shape: tuple[int, int], centre: tuple[float, float]) -> NDArray[np.float32]:
    """A smooth blob peaking at exactly 1 at ``centre`` (column, row)."""
    rows, columns = shape
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    sigma = rows / 10
    values = np.exp(-((yy - centre[1]) ** 2 + (xx - centre[0]) ** 2) / (2 * sigma**2))
    heatmap: NDArray[np.float32] = (values / values.max()).astype(np.float32)
    return heatmap


def image_findings(source: pydicom.Dataset, offset: float = 0.0) -> ImageFindings:
    """The 14 findings, scores 0.0667..0.9333 (+offset); present ones get their heatmap's region."""
    shape = (int(source.Rows), int(source.Columns))
    findings = []
    for index, label in enumerate(CHEST_XRAY14_LABELS):
        score = FindingScore.for_label(label, round((index + 1) / 15 + offset, 4))
        heatmap = blob(shape, (shape[1] * (0.2 + 0.04 * index), shape[0] * 0.5))
        present = score.probability >= THRESHOLD
        region = heatmap_region(heatmap) if present and index % 4 != 0 else None
        findings.append(
            FindingResult(score=score, threshold=THRESHOLD, heatmap=heatmap, region=region)
        )
    return ImageFindings(source=source, display=np.zeros(shape, dtype=np.uint8), findings=findings)


def stand_in(source: pydicom.Dataset, kind: str) -> hd.sc.SCImage:
    """A small Secondary Capture of ``source``'s study standing for the job's SC, SEG or GSPS."""
    with tolerate_single_component_names():
        return hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=np.zeros((16, 16), dtype=np.uint8),
            photometric_interpretation="MONOCHROME2",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=deterministic_uid("test-sr", kind, "series", source.SOPInstanceUID),
            series_number=990,
            sop_instance_uid=deterministic_uid("test-sr", kind, source.SOPInstanceUID),
            instance_number=1,
            manufacturer="RadLight tests",
            patient_orientation=("L", "F"),
        )


def findings_report(
    images: list[ImageFindings],
    *,
    evidence: Sequence[pydicom.Dataset] | None = None,
    sop_instance_uid: str = REPORT_UID,
) -> hd.sr.ComprehensiveSR:
    return build_findings_report(
        images=images,
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test-sr", "series"),
        sop_instance_uid=sop_instance_uid,
        series_number=9902,
        instance_number=1,
        evidence=evidence or (),
        content_datetime=WHEN,
    )


def not_analysed_report(
    sources: list[pydicom.Dataset], reasons: dict[str, str]
) -> hd.sr.ComprehensiveSR:
    return build_not_analysed_report(
        sources=sources,
        reasons=reasons,
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test-sr", "not-analysed-series"),
        sop_instance_uid=deterministic_uid("test-sr", "not-analysed"),
        series_number=9903,
        instance_number=1,
        content_datetime=WHEN,
    )


def header_copy(source: pydicom.Dataset, **changes: object) -> pydicom.Dataset:
    header = pydicom.Dataset()
    for element in source:
        if element.tag != 0x7FE00010:
            header.add(copy.deepcopy(element))
    for keyword, value in changes.items():
        setattr(header, keyword, value)
    return header


def coded(code: object) -> hd.sr.CodedConcept:
    value, scheme, meaning = (getattr(code, k) for k in ("value", "scheme_designator", "meaning"))
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def evaluation_item(group: Sequence[pydicom.Dataset], code: object) -> pydicom.Dataset:
    """The group's CODE item named ``code``, as written, with its children.

    (highdicom's ``QualitativeEvaluation.from_sequence`` keeps only the name and the value.)
    """
    name = coded(code)
    matches = [
        item
        for item in group[0].ContentSequence
        if item.ValueType == "CODE"
        and item.ConceptNameCodeSequence[0].CodeValue == name.value
        and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == name.scheme_designator
    ]
    assert len(matches) == 1
    found: pydicom.Dataset = matches[0]
    return found


def children(item: pydicom.Dataset) -> dict[str, pydicom.Dataset]:
    return {
        child.ConceptNameCodeSequence[0].CodeMeaning: child
        for child in item.get("ContentSequence", [])
    }


@pytest.fixture(scope="module")
def sources(real_dicom_files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in real_dicom_files]


@pytest.fixture(params=[0, 1], ids=["nih_google", "nih_nhsx"])
def source(request: pytest.FixtureRequest, sources: list[pydicom.Dataset]) -> pydicom.Dataset:
    dataset: pydicom.Dataset = sources[request.param]
    return dataset


@pytest.fixture
def evidence(source: pydicom.Dataset) -> list[pydicom.Dataset]:
    return [stand_in(source, kind) for kind in ("sc", "seg", "gsps")]


# -- findings report ---------------------------------------------------------------------------


def test_findings_report_round_trips_through_pydicom_and_highdicom(
    source: pydicom.Dataset, evidence: list[pydicom.Dataset], tmp_path: Path
) -> None:
    data = to_bytes(findings_report([image_findings(source)], evidence=evidence))
    written = read_strict(data)
    assert written.SOPClassUID == ComprehensiveSRStorage
    assert written.StudyInstanceUID == source.StudyInstanceUID
    assert written.SeriesDescription == REPORT_SERIES_DESCRIPTION
    assert (written.PreliminaryFlag, written.VerificationFlag) == ("PRELIMINARY", "UNVERIFIED")
    equipment = written.ContributingEquipmentSequence[0]
    assert equipment.ManufacturerModelName == ALGORITHM.name
    assert ALGORITHM.sha256 in equipment.ContributionDescription
    assert radlight.NOT_FOR_PRIMARY_DIAGNOSIS in equipment.ContributionDescription
    assert LOCAL in [
        item.CodingSchemeDesignator for item in written.CodingSchemeIdentificationSequence
    ]

    path = tmp_path / "sr.dcm"
    path.write_bytes(data)
    reread = hd.sr.srread(path)
    assert isinstance(reread, hd.sr.ComprehensiveSR)
    again = hd.sr.ComprehensiveSR.from_dataset(written)
    assert again.SOPInstanceUID == REPORT_UID
    report = hd.sr.MeasurementReport.from_sequence([written])
    groups = report.get_image_measurement_groups(referenced_sop_instance_uid=source.SOPInstanceUID)
    assert len(groups) == 1
    assert len(groups[0].get_measurements()) == len(CHEST_XRAY14_LABELS)


def test_findings_report_passes_dciodvfy(
    source: pydicom.Dataset, evidence: list[pydicom.Dataset], tmp_path: Path
) -> None:
    data = to_bytes(findings_report([image_findings(source)], evidence=evidence))
    assert_dciodvfy_clean(data, tmp_path / "sr.dcm")


def test_dsr2html_names_every_finding_and_its_score(
    source: pydicom.Dataset, tmp_path: Path
) -> None:
    image = image_findings(source)
    data = to_bytes(findings_report([image]))
    text = dsr2html_text(data, tmp_path / "sr.dcm")

    written = read_strict(data)
    report = hd.sr.MeasurementReport.from_sequence([written])
    group = report.get_image_measurement_groups(referenced_sop_instance_uid=source.SOPInstanceUID)[
        0
    ]
    printed = {
        m.name.meaning: str(m[0].MeasuredValueSequence[0].NumericValue)
        for m in group.get_measurements()
    }
    for finding in image.findings:
        meaning = finding.score.code.meaning
        value = printed[meaning]  # the DS string, as dsr2html prints it
        assert float(value) == pytest.approx(finding.score.probability)
        assert f"{meaning}: {value} {{probability}}" in text
        state = PRESENT if finding.present else ABSENT
        assert f"{meaning}: {state.meaning} ({state.value}, SCT)" in text
    assert f"Threshold Value = {THRESHOLD} {{probability}}" in text
    assert radlight.NOT_FOR_PRIMARY_DIAGNOSIS in text
    assert f'Device Observer Name = "{ALGORITHM.name}"' in text


def test_presence_follows_each_threshold_and_states_it(sources: list[pydicom.Dataset]) -> None:
    source = sources[0]
    thresholds = [0.05, 0.3, 0.3333, 0.9, 1.0]
    findings = [
        FindingResult(score=FindingScore.for_label(label, 0.3333), threshold=threshold)
        for label, threshold in zip(CHEST_XRAY14_LABELS, thresholds, strict=False)
    ]
    image = ImageFindings(
        source=source, display=np.zeros((1024, 1024), dtype=np.uint8), findings=findings
    )
    written = read_strict(to_bytes(findings_report([image])))
    group = hd.sr.MeasurementReport.from_sequence([written]).get_image_measurement_groups()[0]

    for finding in findings:
        evaluations = group.get_qualitative_evaluations(name=coded(finding.score.code))
        assert len(evaluations) == 1
        expected = PRESENT if finding.score.probability >= finding.threshold else ABSENT
        assert evaluations[0][0].value.value == expected.value
        assert evaluations[0][0].value.scheme_designator == "SCT"
        item = evaluation_item(group, finding.score.code)
        below = children(item)
        threshold = below[THRESHOLD_VALUE.meaning]
        assert threshold.RelationshipType == "HAS PROPERTIES"
        assert float(threshold.MeasuredValueSequence[0].NumericValue) == finding.threshold
        assert below["Algorithm Name"].TextValue == ALGORITHM.name
        assert below["Algorithm Version"].TextValue == ALGORITHM.version
        assert below["Algorithm Parameters"].TextValue == f"model sha256={ALGORITHM.sha256}"
    assert [f.present for f in findings] == [True, True, True, False, False]


def test_present_findings_with_a_region_get_a_planar_roi_on_the_source(
    source: pydicom.Dataset,
) -> None:
    image = image_findings(source)
    written = read_strict(to_bytes(findings_report([image])))
    report = hd.sr.MeasurementReport.from_sequence([written])
    rois = report.get_planar_roi_measurement_groups(
        referenced_sop_instance_uid=source.SOPInstanceUID
    )
    expected = [f for f in image.present() if f.region is not None]
    assert expected
    assert len(expected) < len(image.present())  # some present ones have no region
    assert len(rois) == len(expected)
    for roi, finding in zip(rois, expected, strict=True):
        assert finding.region is not None
        assert roi.finding_type is not None
        assert roi.finding_type.value == finding.score.code.value
        region = roi.roi
        assert region is not None
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_array_equal(region.value, finding.region.polygon())
        reference = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        (score,) = roi.get_measurements(name=coded(finding.score.code))
        assert float(score.value) == pytest.approx(finding.score.probability)
        assert children(score[0])["Algorithm Name"].TextValue == ALGORITHM.name
        (presence,) = roi.get_qualitative_evaluations(name=coded(finding.score.code))
        assert presence[0].value.value == PRESENT.value
        assert roi.tracking_uid == deterministic_uid(
            REPORT_UID, "planar-roi", str(source.SOPInstanceUID), finding.score.label
        )


def test_evidence_references_the_jobs_other_objects(
    source: pydicom.Dataset, evidence: list[pydicom.Dataset]
) -> None:
    written = read_strict(to_bytes(findings_report([image_findings(source)], evidence=evidence)))
    referenced = {
        item.ReferencedSOPInstanceUID: item.ReferencedSOPClassUID
        for study in written.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert all(
        study.StudyInstanceUID == source.StudyInstanceUID
        for study in written.CurrentRequestedProcedureEvidenceSequence
    )
    expected = {str(d.SOPInstanceUID): str(d.SOPClassUID) for d in [source, *evidence]}
    assert referenced == expected
    assert "PertinentOtherEvidenceSequence" not in written


def test_findings_report_is_byte_identical_when_rebuilt(
    sources: list[pydicom.Dataset],
) -> None:
    source = sources[1]
    evidence = [stand_in(source, "sc")]
    first = to_bytes(findings_report([image_findings(source)], evidence=evidence))
    assert to_bytes(findings_report([image_findings(source)], evidence=evidence)) == first
    other = findings_report([image_findings(source)], sop_instance_uid=deterministic_uid("x"))
    assert to_bytes(other) != first


def test_two_images_of_one_study_each_get_their_groups(
    sources: list[pydicom.Dataset], tmp_path: Path
) -> None:
    second = header_copy(sources[0], SOPInstanceUID=deterministic_uid("test-sr", "second"))
    images = [image_findings(sources[0]), image_findings(second, offset=-0.05)]
    data = to_bytes(findings_report(images))
    report = hd.sr.MeasurementReport.from_sequence([read_strict(data)])
    for image in images:
        uid = image.sop_instance_uid
        assert len(report.get_image_measurement_groups(referenced_sop_instance_uid=uid)) == 1
        rois = report.get_planar_roi_measurement_groups(referenced_sop_instance_uid=uid)
        assert len(rois) == len([f for f in image.present() if f.region is not None])
    assert_dciodvfy_clean(data, tmp_path / "two.dcm")


def test_findings_report_refuses_bad_inputs(sources: list[pydicom.Dataset]) -> None:
    first, other_study = sources
    with pytest.raises(ValueError, match="another study"):
        findings_report([image_findings(first)], evidence=[stand_in(other_study, "sc")])
    with pytest.raises(ValueError, match="repeats"):
        findings_report(
            [image_findings(first)], evidence=[stand_in(first, "sc"), stand_in(first, "sc")]
        )
    with pytest.raises(ValueError, match="must not be empty"):
        findings_report([])
    with pytest.raises(ValueError, match="one study"):
        findings_report([image_findings(first), image_findings(other_study)])
    outside = HeatmapRegion(x0=900.0, y0=100.0, x1=1100.0, y1=300.0, peak_x=950.0, peak_y=150.0)
    finding = FindingResult(FindingScore.for_label("Mass", 0.9), threshold=0.5, region=outside)
    image = ImageFindings(first, np.zeros((1024, 1024), dtype=np.uint8), [finding])
    with pytest.raises(ValueError, match="outside"):
        findings_report([image])
    empty = ImageFindings(first, np.zeros((1024, 1024), dtype=np.uint8), [])
    with pytest.raises(ValueError, match="no findings"):
        findings_report([empty])


# -- not-analysed report -----------------------------------------------------------------------


@pytest.fixture
def two_images(sources: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Two readable images of one study: a real one and a copy as another instance."""
    second = header_copy(sources[1], SOPInstanceUID=deterministic_uid("test-sr", "lateral"))
    return [sources[1], second]


def test_not_analysed_report_validates_and_reads_back(
    two_images: list[pydicom.Dataset], tmp_path: Path
) -> None:
    reasons = {
        str(two_images[0].SOPInstanceUID): AGE_REASON,
        str(two_images[1].SOPInstanceUID): LATERAL_REASON,
    }
    data = to_bytes(not_analysed_report(two_images, reasons))
    written = read_strict(data)
    assert written.SeriesDescription == NOT_ANALYSED_SERIES_DESCRIPTION
    assert "not for primary diagnosis" in written.SeriesDescription.lower()
    assert written.StudyInstanceUID == two_images[0].StudyInstanceUID
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in written.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == set(reasons)
    assert_dciodvfy_clean(data, tmp_path / "na.dcm")
    path = tmp_path / "na2.dcm"
    path.write_bytes(data)
    assert isinstance(hd.sr.srread(path), hd.sr.ComprehensiveSR)

    report = hd.sr.MeasurementReport.from_sequence([written])
    for uid, reason, code in (
        (str(two_images[0].SOPInstanceUID), AGE_REASON, AGE_OUT_OF_RANGE),
        (str(two_images[1].SOPInstanceUID), LATERAL_REASON, LATERAL_VIEW),
    ):
        (group,) = report.get_image_measurement_groups(referenced_sop_instance_uid=uid)
        assert group.get_measurements() == []
        (evaluation,) = group.get_qualitative_evaluations(name=coded(REASON_NOT_ANALYSED))
        assert evaluation[0].value.value == code.value
        assert evaluation[0].value.scheme_designator == LOCAL
        comment = children(evaluation_item(group, REASON_NOT_ANALYSED))["Comment"].TextValue
        assert comment == reason.replace("\u2013", "-")

    text = dsr2html_text(data, tmp_path / "na3.dcm")
    assert f"Reason not analysed: {LATERAL_VIEW.meaning}" in text
    assert f"Reason not analysed: {AGE_OUT_OF_RANGE.meaning}" in text
    assert LATERAL_REASON in text
    assert "outside this model's range 18-99 y" in text
    assert "AI analysis status: Not analysed" in text
    assert radlight.NOT_FOR_PRIMARY_DIAGNOSIS in text


def test_not_analysed_report_names_an_instance_without_pixels_by_its_uid(
    sources: list[pydicom.Dataset], tmp_path: Path
) -> None:
    """A non-image of the study (no Rows/Columns) is evidence only; its UID is in the reason."""
    source = sources[0]
    other = header_copy(source, SOPInstanceUID=deterministic_uid("test-sr", "no pixels"))
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(other, keyword)
    reasons = {
        str(source.SOPInstanceUID): "view position LL is lateral; the model reads frontal views",
        str(other.SOPInstanceUID): "the instance has no pixel data",
    }
    data = to_bytes(not_analysed_report([source, other], reasons))
    written = read_strict(data)
    assert_dciodvfy_clean(data, tmp_path / "na.dcm")
    report = hd.sr.MeasurementReport.from_sequence([written])
    assert len(report.get_image_measurement_groups()) == 2
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in written.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == set(reasons)
    text = dsr2html_text(data, tmp_path / "na2.dcm")
    assert f"Reason not analysed: {UNREADABLE_IMAGE.meaning}" in text
    assert f"instance {other.SOPInstanceUID}: the instance has no pixel data" in text


def test_not_analysed_report_refuses_bad_inputs(two_images: list[pydicom.Dataset]) -> None:
    first, second = (str(image.SOPInstanceUID) for image in two_images)
    with pytest.raises(ValueError, match="without a reason"):
        not_analysed_report(two_images, {first: LATERAL_REASON})
    with pytest.raises(ValueError, match="not sources"):
        not_analysed_report(
            two_images, {first: LATERAL_REASON, second: LATERAL_REASON, "1.2.3": "x"}
        )
    with pytest.raises(ValueError, match="empty"):
        not_analysed_report(two_images, {first: LATERAL_REASON, second: "  "})
    with pytest.raises(ValueError, match="must not be empty"):
        not_analysed_report([], {})


def _reason_of(check: Callable[[pydicom.Dataset], None], dataset: pydicom.Dataset) -> str:
    with pytest.raises(NotAnalysableError) as raised:
        check(dataset)
    return str(raised.value)


def test_the_workers_reasons_get_their_codes(sources: list[pydicom.Dataset]) -> None:
    source = sources[0]
    lateral_view = copy.deepcopy(source)
    lateral_view.ViewPosition = "LL"
    lateral = _reason_of(check_frontal_chest, lateral_view)
    assert "PixelData" not in header_copy(source)
    no_pixels = _reason_of(check_frontal_chest, header_copy(source))
    child = header_copy(source, PatientAge="007Y")
    young = _reason_of(lambda ds: check_age_range(ds, (18, 99)), child)
    ageless = header_copy(source)
    for keyword in ("PatientAge", "PatientBirthDate"):
        if keyword in ageless:
            delattr(ageless, keyword)
    unknown = _reason_of(lambda ds: check_age_range(ds, (18, 99)), ageless)
    assert not_analysed_reason_code(lateral) == LATERAL_VIEW
    assert not_analysed_reason_code(no_pixels) == UNREADABLE_IMAGE
    assert not_analysed_reason_code(young) == AGE_OUT_OF_RANGE
    assert not_analysed_reason_code(unknown) == AGE_UNKNOWN
    assert not_analysed_reason_code("modality CT is not CR or DX") == NOT_CHEST_RADIOGRAPH
    assert not_analysed_reason_code("body part SKULL is not the chest") == NOT_CHEST_RADIOGRAPH
    assert not_analysed_reason_code("the pixel data cannot be decoded: x") == UNREADABLE_IMAGE
    assert not_analysed_reason_code("multi-frame images are not supported") == UNSUPPORTED_IMAGE
    assert not_analysed_reason_code("the image size 10x10 is outside") == UNSUPPORTED_IMAGE
    assert not_analysed_reason_code("something else") == OTHER_REASON


def test_amended_report_names_the_version_it_supersedes(
    source: pydicom.Dataset, tmp_path: Path
) -> None:
    """A late instance's report: version 2 in its series description, and the first report in its
    Predecessor Documents Sequence, still valid per dciodvfy."""
    first = findings_report([image_findings(source)])
    amended = build_findings_report(
        images=[image_findings(source, offset=0.01)],
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test-sr", "series", "v2"),
        sop_instance_uid=deterministic_uid("test-sr", "v2"),
        series_number=9902,
        instance_number=1,
        content_datetime=WHEN,
        version=2,
        amends=first,
    )
    data = to_bytes(amended)
    written = read_strict(data)
    assert "findings v2 (amended)" in written.SeriesDescription
    assert radlight.NOT_FOR_PRIMARY_DIAGNOSIS.lower() in written.SeriesDescription.lower()
    (study,) = written.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == source.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in read_strict(to_bytes(first))
    assert_dciodvfy_clean(data, tmp_path / "amended.dcm")
    with pytest.raises(ValueError, match="starts at 1"):
        build_findings_report(
            images=[image_findings(source)],
            algorithm=ALGORITHM,
            series_instance_uid=deterministic_uid("test-sr", "series", "v0"),
            sop_instance_uid=deterministic_uid("test-sr", "v0"),
            series_number=9902,
            instance_number=1,
            version=0,
        )
