"""The SR documents against an oracle: highdicom's SR constructor given the whole content tree.

``sr._document`` gives highdicom's constructor the root item without its children and sets the
children afterwards (see its docstring). Each test builds a report twice, once as the builders do
and once with ``_document`` replaced by :func:`highdicom_document` (the way the builders worked
before: the whole tree to the constructor, which copies, parses and walks it), and asserts that
the two are the same dataset and encode to the same bytes, for every report RadLight writes:
findings (several images, findings and regions, evidence, an amended predecessor), not analysed
(an image and a non-image), and grounded, and a source whose header sequences were read from a
file (``_document`` marks the items it made as written; those it did not make keep their own
encoding). What highdicom's constructor refuses, the fast path must refuse too.
"""

import datetime
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from models.grounding.grounder import GroundedPhrase
from models.grounding.phrases import parse_report, split_sentences
from radlight.uids import deterministic_uid
from tests.dicom_io import to_bytes
from tests.grounding_study import REPORT, report_sr
from tests.workers.test_sr import ALGORITHM, WHEN, header_copy, image_findings, stand_in
from workers.results import grounded_sr, sr
from workers.results.common import (
    AlgorithmInfo,
    header_view,
    stamp,
    tolerate_single_component_names,
)


def highdicom_document(
    *,
    report: hd.sr.MeasurementReport,
    evidence: Sequence[pydicom.Dataset],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    series_description: str,
    equipment_description: str,
    when: datetime.datetime,
    previous_versions: Sequence[pydicom.Dataset] = (),
) -> hd.sr.ComprehensiveSR:
    """``sr._document`` as it was: highdicom's ComprehensiveSR constructor given the whole tree
    (the other arguments are the production ones, so only the content handling is compared)."""
    arguments = sr._document_arguments(
        evidence=evidence,
        algorithm=algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
        series_description=series_description,
        equipment_description=equipment_description,
        when=when,
        previous_versions=previous_versions,
    )
    with tolerate_single_component_names():
        document = hd.sr.ComprehensiveSR(content=report, **arguments)
    stamp(document, when)
    return document


def assert_same_document(built: hd.sr.ComprehensiveSR, oracle: hd.sr.ComprehensiveSR) -> None:
    assert to_bytes(built) == to_bytes(oracle)
    assert built == oracle  # element for element, file meta aside
    assert built.file_meta == oracle.file_meta
    assert list(built.content) == list(oracle.content)


@pytest.fixture(scope="module")
def sources(real_dicom_files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in real_dicom_files]


def old_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here to the end of the test, the builders make their documents the old way."""
    monkeypatch.setattr(sr, "_document", highdicom_document)
    monkeypatch.setattr(grounded_sr, "_document", highdicom_document)


def test_findings_report_is_the_dataset_highdicoms_constructor_makes(
    sources: list[pydicom.Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two images of one study, 14 findings each with regions, the job's other objects as
    evidence, and a predecessor report: version 2 of a study's report."""
    first, _ = sources
    second = header_copy(first, SOPInstanceUID=deterministic_uid("test-sr-document", "second"))
    evidence = [stand_in(source, kind) for source in (first, second) for kind in ("sc", "gsps")]
    predecessor = sr.build_findings_report(
        images=[image_findings(first)],
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test-sr-document", "series", "v1"),
        sop_instance_uid=deterministic_uid("test-sr-document", "v1"),
        series_number=9902,
        instance_number=1,
        content_datetime=WHEN,
    )

    def build() -> hd.sr.ComprehensiveSR:
        return sr.build_findings_report(
            images=[image_findings(first), image_findings(second, offset=-0.05)],
            algorithm=ALGORITHM,
            series_instance_uid=deterministic_uid("test-sr-document", "series", "v2"),
            sop_instance_uid=deterministic_uid("test-sr-document", "v2"),
            series_number=9902,
            instance_number=1,
            evidence=evidence,
            content_datetime=WHEN,
            version=2,
            amends=predecessor,
        )

    built = build()
    old_way(monkeypatch)
    oracle = build()
    assert_same_document(built, oracle)
    assert "PredecessorDocumentsSequence" in built
    rois = hd.sr.MeasurementReport.from_sequence([built]).get_planar_roi_measurement_groups()
    assert len(rois) > 2  # the regions of both images are in the compared tree
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for study in built.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert len(referenced) == 2 + len(evidence)


def source_as_read(source: pydicom.Dataset, implicit_vr: bool) -> pydicom.Dataset:
    """``source``'s header with patient and study sequences, written and read back: the items
    of the sequences are read from a file, their elements not yet decoded (raw)."""
    header = header_copy(source, SOPInstanceUID=deterministic_uid("test-sr-document", "implicit"))
    procedure = pydicom.Dataset()
    procedure.CodeValue, procedure.CodingSchemeDesignator = "RPID1", "99HOSPITAL"
    procedure.CodeMeaning = "XR chest PA"
    equivalent = pydicom.Dataset()
    equivalent.CodeValue, equivalent.CodingSchemeDesignator = "36572-6", "LN"
    equivalent.CodeMeaning = "XR Chest PA"
    procedure.EquivalentCodeSequence = [equivalent]  # a sequence in a read item stays raw
    header.ProcedureCodeSequence = [procedure]
    other_id = pydicom.Dataset()
    other_id.PatientID, other_id.TypeOfPatientID = "OTHER-1", "TEXT"
    header.OtherPatientIDsSequence = [other_id]
    header.file_meta = pydicom.dataset.FileMetaDataset()
    header.file_meta.TransferSyntaxUID = (
        pydicom.uid.ImplicitVRLittleEndian if implicit_vr else pydicom.uid.ExplicitVRLittleEndian
    )
    buffer = io.BytesIO()
    header.save_as(buffer, implicit_vr=implicit_vr, little_endian=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)
    assert read.original_encoding == (implicit_vr, True)
    return read


@pytest.mark.parametrize("implicit_vr", [True, False], ids=["implicit", "explicit"])
def test_sequences_copied_from_a_source_as_read_are_written_as_before(
    sources: list[pydicom.Dataset], monkeypatch: pytest.MonkeyPatch, implicit_vr: bool
) -> None:
    """Sequences the document copies from the source's patient and study modules hold items read
    from a file, their elements not yet decoded: written as highdicom's way writes them."""
    source = source_as_read(sources[0], implicit_vr)

    def build() -> hd.sr.ComprehensiveSR:
        return sr.build_findings_report(
            images=[image_findings(source)],
            algorithm=ALGORITHM,
            series_instance_uid=deterministic_uid("test-sr-document", "implicit-series"),
            sop_instance_uid=deterministic_uid("test-sr-document", "implicit-report"),
            series_number=9902,
            instance_number=1,
            content_datetime=WHEN,
        )

    built = build()
    assert built.ProcedureCodeSequence[0].original_encoding == (implicit_vr, True)
    old_way(monkeypatch)
    assert_same_document(built, build())
    written = pydicom.dcmread(io.BytesIO(to_bytes(built)))
    assert written.ProcedureCodeSequence[0].CodeMeaning == "XR chest PA"
    assert written.ProcedureCodeSequence[0].EquivalentCodeSequence[0].CodeValue == "36572-6"
    assert written.OtherPatientIDsSequence[0].PatientID == "OTHER-1"


def test_not_analysed_report_is_the_dataset_highdicoms_constructor_makes(
    sources: list[pydicom.Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = sources[1]
    other = header_copy(source, SOPInstanceUID=deterministic_uid("test-sr-document", "no pixels"))
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(other, keyword)
    reasons = {
        str(source.SOPInstanceUID): "view position LL is lateral; the model reads frontal views",
        str(other.SOPInstanceUID): "the instance has no pixel data",
    }

    def build() -> hd.sr.ComprehensiveSR:
        return sr.build_not_analysed_report(
            sources=[source, other],
            reasons=reasons,
            algorithm=ALGORITHM,
            series_instance_uid=deterministic_uid("test-sr-document", "not-analysed-series"),
            sop_instance_uid=deterministic_uid("test-sr-document", "not-analysed"),
            series_number=9903,
            instance_number=1,
            content_datetime=WHEN,
        )

    built = build()
    old_way(monkeypatch)
    assert_same_document(built, build())


def grounded_sentences() -> list[grounded_sr.ReportSentence]:
    """The sentences of a report: its groundable phrases with an outline, the others with a
    reason."""
    heatmap = np.ones((8, 8), dtype=np.float32)
    phrases = [
        GroundedPhrase(
            phrase=phrase,
            heatmap=heatmap if phrase.findings else None,
            box=(100, 200, 400, 600) if phrase.findings else None,
            polygon=((100.0, 200.0), (400.0, 200.0), (400.0, 600.0), (100.0, 600.0))
            if phrase.findings
            else None,
            score=0.75 if phrase.findings else None,
            reason=None if phrase.findings else "nothing to point at",
        )
        for phrase in parse_report(REPORT)
    ]
    sentences = grounded_sr.report_sentences(REPORT, split_sentences(REPORT), phrases)
    assert any(s.regions for s in sentences)
    assert any(not s.regions for s in sentences)
    return sentences


def test_grounded_report_is_the_dataset_highdicoms_constructor_makes(
    sources: list[pydicom.Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every sentence of a report, its groundable phrases with an outline on the source."""
    source = sources[0]
    sentences = grounded_sentences()
    report = report_sr(source)

    def build() -> hd.sr.ComprehensiveSR:
        return grounded_sr.build_grounded_report(
            source=source,
            sentences=sentences,
            algorithm=ALGORITHM,
            series_instance_uid=deterministic_uid("test-sr-document", "grounded-series"),
            sop_instance_uid=deterministic_uid("test-sr-document", "grounded"),
            series_number=9910,
            instance_number=1,
            report=report,
            evidence=[stand_in(source, "grounded-sc")],
            content_datetime=WHEN,
        )

    built = build()
    old_way(monkeypatch)
    assert_same_document(built, build())


def _document_of(content: hd.sr.MeasurementReport, evidence: list[pydicom.Dataset]) -> None:
    sr._document(
        report=content,
        evidence=evidence,
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test-sr-document", "refused-series"),
        sop_instance_uid=deterministic_uid("test-sr-document", "refused"),
        series_number=9902,
        instance_number=1,
        series_description=sr.REPORT_SERIES_DESCRIPTION,
        equipment_description="AI findings report",
        when=WHEN,
    )


def _oracle_of(content: hd.sr.MeasurementReport, evidence: list[pydicom.Dataset]) -> None:
    highdicom_document(
        report=content,
        evidence=evidence,
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test-sr-document", "refused-series"),
        sop_instance_uid=deterministic_uid("test-sr-document", "refused"),
        series_number=9902,
        instance_number=1,
        series_description=sr.REPORT_SERIES_DESCRIPTION,
        equipment_description="AI findings report",
        when=WHEN,
    )


Build = Callable[[hd.sr.MeasurementReport, list[pydicom.Dataset]], None]


def _report_on(region: hd.sr.ImageRegion | hd.sr.ImageRegion3D) -> hd.sr.MeasurementReport:
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=deterministic_uid("test-sr-document", "roi"), identifier="region"
        ),
        referenced_region=region,
    )
    return hd.sr.MeasurementReport(
        observation_context=sr._device_context(ALGORITHM),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[group],
    )


@pytest.mark.parametrize("build", [_document_of, _oracle_of], ids=["fast", "highdicom"])
def test_a_reference_to_an_instance_that_is_not_evidence_is_refused(
    sources: list[pydicom.Dataset], build: Build
) -> None:
    view = header_view(sources[0])
    other = header_view(header_copy(sources[0], SOPInstanceUID=deterministic_uid("x", "other")))
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[10.0, 20.0]]),
        source_image=hd.sr.SourceImageForRegion.from_source_image(view),
    )
    content = _report_on(region)
    build(content, [view])  # referenced instance given: accepted
    with pytest.raises(ValueError, match=str(view.SOPInstanceUID)):
        build(_report_on(region), [other])


@pytest.mark.parametrize("build", [_document_of, _oracle_of], ids=["fast", "highdicom"])
def test_three_dimensional_coordinates_are_refused(
    sources: list[pydicom.Dataset], build: Build
) -> None:
    view = header_view(sources[0])
    region = hd.sr.ImageRegion3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
        graphic_data=np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
        frame_of_reference_uid=deterministic_uid("test-sr-document", "frame"),
    )
    with pytest.raises(ValueError, match="SCOORD3D"):
        build(_report_on(region), [view])
