"""The SR documents RadLight sends back: the findings report, and the "not analysed" report.

Both are TID 1500 Imaging Measurement Reports in a Comprehensive SR, built through highdicom's
templates. The findings report:

    TID 1500 Imaging Measurement Report
      language (TID 1204), device observer = the algorithm (TID 1001/1002/1004)
      procedure reported: SCT 363679005 "Imaging procedure"
      Image Library (TID 1600): every source image
      Imaging Measurements
        per source image, TID 1501 Measurement Group
          tracking identifier and UID (derived from the report's SOP Instance UID)
          TID 4019 Algorithm Identification; source image (121112 "Source of Measurement")
          per finding, TID 300 Measurement: the finding's code = score {probability},
            with TID 4019 Algorithm Identification (name, version, manufacturer, model sha256)
          per finding, qualitative evaluation: the finding's code = SCT "Present" | "Absent"
            > HAS PROPERTIES NUM DCM 122411 "Threshold Value" = the operating threshold
            > HAS CONCEPT MOD TID 4019 Algorithm Identification
          qualitative evaluation "Intended use" = "NOT FOR PRIMARY DIAGNOSIS" (local code)
        per present finding with a region, TID 1410 Planar ROI Measurement Group
          tracking identifier and UID; finding type = the finding's code; TID 4019
          Image Region: SCOORD POLYLINE, the region's closed box on the source image
          TID 300 Measurement: the finding's code = score; the finding's code = "Present" (as above)

Present and Absent are the SNOMED CT concepts of pydicom's DICOM code tables (CID 240): Present
52101004, Absent 272519000. The threshold is the card's operating threshold: a finding is present
when its score is at or above it (``FindingResult.present``). It is stated as a NUM child of each
evaluation (Comprehensive SR allows CODE HAS PROPERTIES NUM; TID 1501/1410 neither ask for nor
forbid it), so both a person reading the rendered report and a script see which cut-off was used.

The other objects of the job (SC overlays, SEG, GSPS) are listed as evidence: highdicom puts the
instances of the report's study in the Current Requested Procedure Evidence Sequence, so a viewer
or script can go from the SR to each of them.

The not-analysed report has the same frame, and per source image a TID 1501 group without
measurements: "AI analysis status" = "Not analysed", "Reason not analysed" = a local reason code
with the worker's own words as a TEXT "Comment" child, and "Intended use". It only describes
readable instances (the pipeline passes parsed datasets; an unparseable file never reaches a
result builder and is recorded by the node as an ingest failure).

Comprehensive SR rather than Comprehensive 3D SR: there are no 3-D coordinates, and PACS and
viewers support Comprehensive SR far more widely.
"""

import datetime
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement
from pydicom.sr.codedict import codes
from pydicom.valuerep import DS

import radlight
from models.labels import LOCAL, FindingCode
from radlight.uids import deterministic_uid
from workers.results.common import (
    AlgorithmInfo,
    algorithm_equipment,
    ascii_text,
    check_positive_int,
    check_source_image,
    check_uid,
    header_view,
    resolve_content_datetime,
    stamp,
    tolerate_single_component_names,
)
from workers.results.dataset_copy import copy_tree
from workers.results.regions import FindingResult, HeatmapRegion, ImageFindings

REPORT_SERIES_DESCRIPTION = "RadLight AI findings - not for primary diagnosis"
NOT_ANALYSED_SERIES_DESCRIPTION = "RadLight AI not analysed - not for primary diagnosis"
PROBABILITY_UNIT = FindingCode("{probability}", "UCUM", "probability")
INTENDED_USE = FindingCode("INTENDED_USE", LOCAL, "Intended use")
NOT_FOR_PRIMARY_DIAGNOSIS_CODE = FindingCode(
    "NOT_PRIMARY_DX", LOCAL, radlight.NOT_FOR_PRIMARY_DIAGNOSIS
)
PRESENT = FindingCode(codes.SCT.Present.value, "SCT", codes.SCT.Present.meaning)
ABSENT = FindingCode(codes.SCT.Absent.value, "SCT", codes.SCT.Absent.meaning)
THRESHOLD_VALUE = FindingCode(
    codes.DCM.ThresholdValue.value, "DCM", codes.DCM.ThresholdValue.meaning
)
COMMENT = FindingCode(codes.DCM.Comment.value, "DCM", codes.DCM.Comment.meaning)

ANALYSIS_STATUS = FindingCode("AI_STATUS", LOCAL, "AI analysis status")
NOT_ANALYSED = FindingCode("NOT_ANALYSED", LOCAL, "Not analysed")
REASON_NOT_ANALYSED = FindingCode("REASON_NOT_ANLYS", LOCAL, "Reason not analysed")
LATERAL_VIEW = FindingCode("LATERAL_VIEW", LOCAL, "Lateral view")
UNSUPPORTED_VIEW = FindingCode("UNSUPPORTED_VIEW", LOCAL, "View position not read by the model")
AGE_UNKNOWN = FindingCode("AGE_UNKNOWN", LOCAL, "Patient age unknown")
AGE_OUT_OF_RANGE = FindingCode("AGE_OUT_OF_RANGE", LOCAL, "Patient age outside model range")
NOT_CHEST_RADIOGRAPH = FindingCode("NOT_CHEST_XRAY", LOCAL, "Not a chest radiograph")
UNSUPPORTED_IMAGE = FindingCode("UNSUPPORTED_IMG", LOCAL, "Image type not supported by the model")
UNREADABLE_IMAGE = FindingCode("UNREADABLE_IMAGE", LOCAL, "Unreadable image")
OTHER_REASON = FindingCode("OTHER_REASON", LOCAL, "Other reason")

# The worker's reasons (workers/imaging.py) to codes: first rule whose every word is in the reason
# (lower case) wins, so the more specific rules come first.
_REASON_RULES: tuple[tuple[tuple[str, ...], FindingCode], ...] = (
    (("lateral",), LATERAL_VIEW),
    (("view position",), UNSUPPORTED_VIEW),
    (("patient age", "unknown"), AGE_UNKNOWN),
    (("patient age",), AGE_OUT_OF_RANGE),
    (("no pixel data",), UNREADABLE_IMAGE),
    (("cannot be decoded",), UNREADABLE_IMAGE),
    (("no contrast",), UNREADABLE_IMAGE),
    (("unreadable",), UNREADABLE_IMAGE),
    (("modality",), NOT_CHEST_RADIOGRAPH),
    (("body part",), NOT_CHEST_RADIOGRAPH),
    (("not a chest",), NOT_CHEST_RADIOGRAPH),
    (("colour",), UNSUPPORTED_IMAGE),
    (("multi-frame",), UNSUPPORTED_IMAGE),
    (("image size",), UNSUPPORTED_IMAGE),
    (("photometric",), UNSUPPORTED_IMAGE),
)
_REASON_MAX = 1024
_Group = TypeVar(
    "_Group",
    hd.sr.MeasurementsAndQualitativeEvaluations,
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
)
_PROJECTION_MODALITIES = frozenset({"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"})
_CROSS_SECTIONAL_MODALITIES = frozenset({"CT", "MR", "PT"})
_NEUTRAL_MODALITY = "OT"
_CONTENT_SEQUENCE = pydicom.tag.Tag("ContentSequence")
_REFERENCE_VALUE_TYPES = frozenset({"IMAGE", "COMPOSITE"})


@functools.lru_cache(maxsize=512)
def _concept(code: FindingCode) -> hd.sr.CodedConcept:
    """The code as highdicom's CodedConcept, made once per process and shared by every report.

    A code is the same in every report, and making it is a quarter of the time spent on a
    finding's items. Sharing one dataset is safe because result objects are not changed after
    they are built (``links.REPORT_PURPOSE`` is shared the same way); never change a code in place.
    """
    return hd.sr.CodedConcept(
        value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning
    )


def _library_view(view: pydicom.Dataset) -> pydicom.Dataset:
    """What the Image Library entry describes of a source, limited to what the source really has.

    highdicom adds modality-specific descriptors (TID 1603/1604) from attributes it reads without
    checking; a DX without Patient Orientation or Imager Pixel Spacing would fail. Such a source is
    described by the TID 1602 descriptors only: the neutral modality here merely selects that, it
    is not written (the library codes the modality from the SOP class).
    """
    entry = pydicom.Dataset()
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "FrameOfReferenceUID",
        "PatientOrientation",
        "ImagerPixelSpacing",
        "PixelSpacing",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "SliceThickness",
        "SpacingBetweenSlices",
    ):
        if keyword in view and view[keyword].value not in (None, ""):
            entry[keyword] = view[keyword]
    modality = view.get("Modality")
    if modality in _PROJECTION_MODALITIES:
        usable = "PatientOrientation" in entry and "ImagerPixelSpacing" in entry
    elif modality in _CROSS_SECTIONAL_MODALITIES:
        usable = all(
            keyword in entry
            for keyword in (
                "PixelSpacing",
                "ImageOrientationPatient",
                "ImagePositionPatient",
                "SliceThickness",
            )
        )
    else:
        usable = False
    entry.Modality = modality if usable else _NEUTRAL_MODALITY
    return entry


def _algorithm_identification(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        manufacturer=algorithm.manufacturer,
        parameters=[f"model sha256={algorithm.sha256}"],
    )


def _device_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    """The observer context: the algorithm, as a device (TID 1004)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=deterministic_uid(
            "device-observer", algorithm.name, algorithm.version, algorithm.sha256
        ),
        name=algorithm.name,
        manufacturer_name=algorithm.manufacturer,
        model_name=algorithm.title,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _intended_use() -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(
        name=_concept(INTENDED_USE), value=_concept(NOT_FOR_PRIMARY_DIAGNOSIS_CODE)
    )


def _with_children(
    evaluation: hd.sr.QualitativeEvaluation, children: Sequence[hd.sr.ContentItem]
) -> hd.sr.QualitativeEvaluation:
    """``evaluation`` with ``children`` below its CODE item (highdicom's template has no slot).

    The content item makes the list a highdicom ContentSequence, which checks each child.
    """
    evaluation[0].ContentSequence = list(children)
    return evaluation


def _render_separately(group: _Group) -> _Group:
    """Mark a measurement group's items as separate statements (Continuity of Content SEPARATE).

    highdicom writes every container CONTINUOUS; renderers such as dcmtk's dsr2html then run the
    items together as prose and leave out their concept names, so "Cardiomegaly: 0.73" would read
    "0.73". The items of a measurement group are separate statements, and TID 1501/1410 leave the
    continuity open.
    """
    group[0].ContinuityOfContent = "SEPARATE"
    return group


def _presence(
    code: FindingCode,
    present: bool,
    threshold: float,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.QualitativeEvaluation:
    """The finding's code = Present or Absent, with the threshold and the algorithm below it."""
    evaluation = hd.sr.QualitativeEvaluation(
        name=_concept(code), value=_concept(PRESENT if present else ABSENT)
    )
    threshold_item = hd.sr.NumContentItem(
        name=_concept(THRESHOLD_VALUE),
        value=float(threshold),
        unit=_concept(PROBABILITY_UNIT),
        relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
    )
    return _with_children(evaluation, [threshold_item, *algorithm_id])


def _score(
    code: FindingCode, probability: float, algorithm_id: hd.sr.AlgorithmIdentification
) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=_concept(code),
        value=probability,
        unit=_concept(PROBABILITY_UNIT),
        algorithm_id=algorithm_id,
    )


def _check_instance(source: object, what: str) -> pydicom.Dataset:
    """A dataset that identifies an instance (image or not): SOP class and instance, study, series."""
    if not isinstance(source, pydicom.Dataset):
        raise TypeError(f"{what} must be a pydicom Dataset")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        check_uid(source.get(keyword), f"{what}.{keyword}")
    return source


def _is_image(source: pydicom.Dataset) -> bool:
    rows, columns = source.get("Rows"), source.get("Columns")
    return isinstance(rows, int) and isinstance(columns, int) and rows > 0 and columns > 0


def _check_sources(
    sources: Sequence[pydicom.Dataset], *, images_only: bool = True
) -> list[pydicom.Dataset]:
    if isinstance(sources, pydicom.Dataset) or not isinstance(sources, Sequence):
        raise TypeError("sources must be a sequence of pydicom Datasets")
    if not sources:
        raise ValueError("sources must not be empty")
    check = check_source_image if images_only else _check_instance
    checked = [check(source, f"sources[{i}]") for i, source in enumerate(sources)]
    study_uids = {str(source.StudyInstanceUID) for source in checked}
    if len(study_uids) != 1:
        raise ValueError("all sources must belong to one study")
    sop_uids = [str(source.SOPInstanceUID) for source in checked]
    if len(set(sop_uids)) != len(sop_uids):
        raise ValueError("sources must not repeat an image")
    return checked


def _check_region(region: HeatmapRegion, source: pydicom.Dataset, what: str) -> None:
    """The region lies on the source image: 0 ≤ x ≤ Columns, 0 ≤ y ≤ Rows (pixel-edge coordinates)."""
    if not isinstance(region, HeatmapRegion):
        raise TypeError(f"{what}.region must be a HeatmapRegion")
    corners = (region.x0, region.y0, region.x1, region.y1)
    if not all(math.isfinite(value) for value in corners):
        raise ValueError(f"{what}.region has a non-finite coordinate")
    columns, rows = int(source.Columns), int(source.Rows)
    if region.x0 < 0 or region.y0 < 0 or region.x1 > columns or region.y1 > rows:
        raise ValueError(f"{what}.region {corners} is outside the {columns}x{rows} source image")


def _check_images(images: Sequence[ImageFindings]) -> list[ImageFindings]:
    if not isinstance(images, Sequence):
        raise TypeError("images must be a sequence of ImageFindings")
    if not images:
        raise ValueError("images must not be empty")
    for i, image in enumerate(images):
        if not isinstance(image, ImageFindings):
            raise TypeError(f"images[{i}] must be an ImageFindings")
    _check_sources([image.source for image in images])
    for i, image in enumerate(images):
        if not image.findings:
            raise ValueError(f"source {image.sop_instance_uid} has no findings")
        for k, finding in enumerate(image.findings):
            if not isinstance(finding, FindingResult):
                raise TypeError(f"images[{i}].findings[{k}] must be a FindingResult")
            if finding.region is not None:
                _check_region(finding.region, image.source, f"images[{i}].findings[{k}]")
    return list(images)


def _check_evidence(
    evidence: Sequence[pydicom.Dataset], study_uid: str, source_uids: set[str]
) -> list[pydicom.Dataset]:
    """The job's other objects (SC, SEG, GSPS): identified, of the report's study, each once."""
    if isinstance(evidence, pydicom.Dataset) or not isinstance(evidence, Sequence):
        raise TypeError("evidence must be a sequence of pydicom Datasets")
    seen = set(source_uids)
    for i, item in enumerate(evidence):
        _check_instance(item, f"evidence[{i}]")
        if item.StudyInstanceUID != study_uid:
            raise ValueError(f"evidence[{i}] belongs to another study than the sources")
        uid = str(item.SOPInstanceUID)
        if uid in seen:
            raise ValueError(f"evidence[{i}] repeats instance {uid}")
        seen.add(uid)
    return list(evidence)


def _check_document_ids(
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
) -> None:
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError("algorithm must be an AlgorithmInfo")
    check_uid(series_instance_uid, "series_instance_uid")
    check_uid(sop_instance_uid, "sop_instance_uid")
    check_positive_int(series_number, "series_number")
    check_positive_int(instance_number, "instance_number")


def _content_frame(root: pydicom.Dataset) -> pydicom.Dataset:
    """The report's root item without its children: what highdicom's SR constructor is given.

    The same element objects as ``root``'s (as highdicom itself copies them into the document),
    with an empty Content Sequence in place of the tree.
    """
    frame = pydicom.Dataset()
    for element in root:
        if element.tag != _CONTENT_SEQUENCE:
            frame.add(element)
    frame.ContentSequence = []
    return frame


def _check_content_references(root: pydicom.Dataset, evidence: Sequence[pydicom.Dataset]) -> None:
    """What highdicom's SR constructor checks of a content tree, in one walk: every instance an
    IMAGE or COMPOSITE item references is in ``evidence``, and there is no SCOORD3D item (not
    allowed in a Comprehensive SR)."""
    known = {str(item.SOPInstanceUID) for item in evidence}
    missing: list[str] = []
    pending = list(root.ContentSequence)
    while pending:
        item = pending.pop()
        value_type = item.ValueType
        if value_type in _REFERENCE_VALUE_TYPES:
            uid = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            if uid not in known:
                missing.append(uid)
        elif value_type == "SCOORD3D":
            raise ValueError("Comprehensive SR does not support content items with SCOORD3D")
        children = item.get(_CONTENT_SEQUENCE)
        if children is not None:
            pending.extend(children.value)
    if missing:
        raise ValueError(f"the content references instances that are not evidence: {missing}")


def _mark_items_as_written(document: pydicom.Dataset) -> None:
    """Tell pydicom that the document's sequence items need no VR correction of their own.

    pydicom's writer, for each dataset it writes that was not read in the transfer syntax it is
    writing (``original_encoding``), first corrects the ambiguous VRs of that dataset's whole
    subtree: a content tree six levels deep is walked six times, a fifth of the time it takes to
    encode a findings report. The document itself is never marked, so the writer still corrects
    the whole tree once, from the root, before writing anything; the later walks of the items
    find nothing left to correct, and the items marked here skip them. The marks are what
    ``Dataset.set_original_encoding`` is documented for (optimised writing), they say Explicit VR
    Little Endian (highdicom's and RadLight's SR transfer syntax; another one simply does not
    match them, and pydicom corrects as before) and pydicom's default character set (an item's
    own when it has no Specific Character Set). Only items made in this process, holding no raw
    (undecoded) element, are marked: an item read from a file (one copied from a source header)
    keeps its own encoding, and the writer decodes and corrects it as before. The bytes are the
    same either way (tests/workers/test_sr_document.py).
    """
    pending = _sequence_items(document)
    while pending:
        item = pending.pop()
        made_here = item.original_encoding == (None, None)
        if made_here and not any(element.is_raw for element in item.values()):
            item.set_original_encoding(False, True, default_encoding)
        pending.extend(_sequence_items(item))


def _sequence_items(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    """The items of ``dataset``'s decoded sequences (a raw one, still bytes, holds none of ours)."""
    items: list[pydicom.Dataset] = []
    for element in dataset.values():
        if isinstance(element, DataElement) and element.VR == "SQ":
            items.extend(element.value)
    return items


def _document_arguments(
    *,
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
) -> dict[str, Any]:
    """highdicom's ComprehensiveSR arguments but the content: one place, so the oracle test
    builds the same document the slow way from them."""
    return {
        "evidence": evidence,
        "series_instance_uid": series_instance_uid,
        "series_number": series_number,
        "sop_instance_uid": sop_instance_uid,
        "instance_number": instance_number,
        "manufacturer": algorithm.manufacturer,
        "is_complete": True,
        "is_final": False,
        "is_verified": False,
        "contributing_equipment": [
            algorithm_equipment(
                algorithm,
                when,
                f"{equipment_description} by {algorithm.title} "
                f"(model sha256 {algorithm.sha256}). {radlight.NOT_FOR_PRIMARY_DIAGNOSIS}",
            )
        ],
        "coding_schemes": [
            CodingSchemeIdentificationItem(
                designator=LOCAL,
                name="RadLight local codes",
                responsible_organization=algorithm.manufacturer,
            )
        ],
        "series_description": series_description,
        "manufacturer_model_name": algorithm.name,
        "software_versions": [algorithm.version, f"RadLight {algorithm.software_version}"],
        "content_date": when.date(),
        "content_time": when.time(),
        "previous_versions": list(previous_versions) or None,
    }


def _document(
    *,
    report: hd.sr.ContentSequence,
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
    """The Comprehensive SR around ``report``: PRELIMINARY, UNVERIFIED, local codes declared;
    ``previous_versions`` go in its Predecessor Documents Sequence.

    highdicom's constructor is given the report's root item without its children, and the
    children are set on the document after it: the same dataset, element for element, as when
    the whole tree is given (tests/workers/test_sr_document.py checks the bytes against that),
    in about 5 ms instead of 150. Given the whole tree, the constructor deep-copies it, parses
    the copy back into content items, and walks it three times (references to images, to other
    composites, 3-D coordinates), which is three quarters of building a findings report. What
    those steps check, :func:`_check_content_references` checks in one walk; the tree itself is
    made by highdicom's templates, which check each item as it is made. The evidence sequences
    are still built by highdicom from ``evidence``, and ``document.content`` is ``report``
    itself (highdicom's would be a parsed copy).
    """
    root = report[0]
    _check_content_references(root, evidence)
    arguments = _document_arguments(
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
        document = hd.sr.ComprehensiveSR(content=_content_frame(root), **arguments)
    document[_CONTENT_SEQUENCE] = root[_CONTENT_SEQUENCE]
    document._content = report  # as highdicom's from_dataset sets it
    stamp(document, when)
    _mark_items_as_written(document)
    return document


_ContentBuilder = Callable[
    [Sequence[ImageFindings], Sequence[pydicom.Dataset], AlgorithmInfo, str], hd.sr.ContentSequence
]


def build_findings_report(
    *,
    images: Sequence[ImageFindings],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    evidence: Sequence[pydicom.Dataset] = (),
    content_datetime: datetime.datetime | None = None,
    version: int = 1,
    amends: pydicom.Dataset | None = None,
    content_builder: _ContentBuilder | None = None,
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR (TID 1500) with each source image's findings (see the module docstring).

    ``amends`` is the report of this study's previous version (an earlier job over fewer
    instances, before a late arrival re-opened the study): it is listed in the Predecessor
    Documents Sequence and the series description says ``version``, so a reader sees one report
    that supersedes the other rather than two unrelated ones.

    Each finding gets its score, its present/absent evaluation at its threshold, and, when present
    and localised, a planar ROI with its region on the source. ``evidence`` (the job's SC, SEG and
    GSPS objects, of the same study) is referenced so that a PACS can find them from the report.
    Tracking UIDs derive from ``sop_instance_uid``, the device observer UID from the algorithm's
    identity, and every date and time from ``content_datetime`` (None means now); with an explicit
    one, the same inputs give the same bytes. The report is PRELIMINARY and UNVERIFIED: no person
    has read it.

    The content tree is made by :func:`_findings_content`, from copies of items made once by
    highdicom's templates. ``content_builder`` replaces it: only
    :func:`build_findings_report_with_templates` does, to make the same document with the
    templates throughout (tests/workers/test_sr_fast.py holds the two to the same bytes).
    """
    content = content_builder or _findings_content
    checked_images = _check_images(images)
    _check_document_ids(
        algorithm, series_instance_uid, sop_instance_uid, series_number, instance_number
    )
    study_uid = str(checked_images[0].source.StudyInstanceUID)
    checked_evidence = _check_evidence(
        evidence, study_uid, {image.sop_instance_uid for image in checked_images}
    )
    when = resolve_content_datetime(content_datetime)
    series_description = report_series_description(version)
    views = [header_view(image.source) for image in checked_images]
    return _document(
        report=content(checked_images, views, algorithm, sop_instance_uid),
        evidence=[*views, *checked_evidence],
        algorithm=algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
        series_description=series_description,
        equipment_description="AI findings report",
        when=when,
        previous_versions=[amends] if amends is not None else [],
    )


def _group_uid(report_uid: str, source_uid: str) -> str:
    return deterministic_uid(report_uid, "measurement-group", source_uid)


def _group_identifier(algorithm: AlgorithmInfo, number: int) -> str:
    return f"{algorithm.name} findings, image {number}"


def _roi_uid(report_uid: str, source_uid: str, finding: FindingResult) -> str:
    return deterministic_uid(report_uid, "planar-roi", source_uid, finding.score.label)


def _roi_identifier(finding: FindingResult, number: int) -> str:
    return f"{finding.score.code.meaning} region, image {number}"


def _findings_content_with_templates(
    images: Sequence[ImageFindings],
    views: Sequence[pydicom.Dataset],
    algorithm: AlgorithmInfo,
    report_uid: str,
) -> hd.sr.ContentSequence:
    """The findings report's content tree, every item made by highdicom's templates."""
    algorithm_id = _algorithm_identification(algorithm)
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    for number, (image, view) in enumerate(zip(images, views, strict=True), start=1):
        source_uid = image.sop_instance_uid
        # A finding's score and presence items, made once: its planar ROI group below states the
        # same two items (highdicom adds the items themselves to each group, as it does the
        # algorithm's, so they are shared by the two groups; they are not changed after this).
        scores = [
            _score(finding.score.code, finding.score.probability, algorithm_id)
            for finding in image.findings
        ]
        presences = [
            _presence(finding.score.code, finding.present, finding.threshold, algorithm_id)
            for finding in image.findings
        ]
        items = {
            id(finding): (score, presence)
            for finding, score, presence in zip(image.findings, scores, presences, strict=True)
        }
        groups.append(
            _render_separately(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=_group_uid(report_uid, source_uid),
                        identifier=_group_identifier(algorithm, number),
                    ),
                    algorithm_id=algorithm_id,
                    measurements=scores,
                    qualitative_evaluations=[*presences, _intended_use()],
                    source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(view)],
                )
            )
        )
        for finding in image.present():
            if finding.region is None:
                continue
            score, presence = items[id(finding)]
            groups.append(
                _render_separately(
                    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                        tracking_identifier=hd.sr.TrackingIdentifier(
                            uid=_roi_uid(report_uid, source_uid, finding),
                            identifier=_roi_identifier(finding, number),
                        ),
                        referenced_region=_image_region(finding.region, view),
                        finding_type=_concept(finding.score.code),
                        algorithm_id=algorithm_id,
                        measurements=[score],
                        qualitative_evaluations=[presence],
                    )
                )
            )
    return hd.sr.MeasurementReport(
        observation_context=_device_context(algorithm),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        referenced_images=[_library_view(view) for view in views],
    )


# build_findings_report's document with its content made by highdicom's templates item by item
# (three to six times slower): the reference the fast content is tested and benchmarked against.
build_findings_report_with_templates = functools.partial(
    build_findings_report, content_builder=_findings_content_with_templates
)


def _image_region(region: HeatmapRegion, view: pydicom.Dataset) -> hd.sr.ImageRegion:
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=region.polygon(),
        source_image=hd.sr.SourceImageForRegion.from_source_image(view),
    )


def _findings_content(
    images: Sequence[ImageFindings],
    views: Sequence[pydicom.Dataset],
    algorithm: AlgorithmInfo,
    report_uid: str,
) -> hd.sr.ContentSequence:
    """:func:`_findings_content_with_templates`'s tree, the same datasets in the same order, but
    made of copies (:func:`dataset_copy.copy_tree`) of items highdicom's templates made once per
    process (:class:`_Prototypes`), with the values of this report set on the copies: scores,
    thresholds, tracking identifiers and UIDs. What is made once per image (its library entry,
    its source reference, its first region) is still made by highdicom; its other regions are
    copies of its first with their own coordinates.

    Within the report, a finding's score and presence items are the same objects in its image's
    group and in its planar ROI group, as highdicom's templates share them; no dataset is shared
    with another report or with the prototypes.
    """
    prototypes = _prototypes(algorithm)
    groups: list[pydicom.Dataset] = []
    for number, (image, view) in enumerate(zip(images, views, strict=True), start=1):
        source_uid = image.sop_instance_uid
        scores = [prototypes.score(finding) for finding in image.findings]
        presences = [prototypes.presence(finding) for finding in image.findings]
        items = {
            id(finding): (score, presence)
            for finding, score, presence in zip(image.findings, scores, presences, strict=True)
        }
        group = prototypes.group(
            "1501", _group_uid(report_uid, source_uid), _group_identifier(algorithm, number)
        )
        group_source = hd.sr.SourceImageForMeasurementGroup.from_source_image(view)
        groups.append(
            _with_items(group, [*scores, *presences, prototypes.intended_use(), group_source])
        )
        first_region: pydicom.Dataset | None = None
        for finding in image.present():
            if finding.region is None:
                continue
            score, presence = items[id(finding)]
            region: pydicom.Dataset
            if first_region is None:
                region = first_region = _image_region(finding.region, view)
            else:  # the same item on the same image, with its own coordinates
                region = copy_tree(first_region)
                _set_graphic_data(region, finding.region)
            roi = prototypes.group(
                "1410",
                _roi_uid(report_uid, source_uid, finding),
                _roi_identifier(finding, number),
                finding_type=finding.score.code,
            )
            groups.append(_with_items(roi, [score, presence, region]))
    measurements = copy_tree(prototypes.imaging_measurements)
    _set_items(measurements, groups)
    root = hd.sr.ContainerContentItem(
        name=codes.cid7021.ImagingMeasurementReport, template_id="1500"
    )
    library = hd.sr.ImageLibrary([_library_view(view) for view in views])
    _set_items(root, [*(copy_tree(item) for item in prototypes.header), *library, measurements])
    return hd.sr.ContentSequence([root], is_root=True)


def _set_items(parent: pydicom.Dataset, items: list[pydicom.Dataset]) -> None:
    """``parent``'s Content Sequence, set as pydicom sets a sequence (highdicom's would check
    that every item is a highdicom content item, which copies are not)."""
    parent[_CONTENT_SEQUENCE] = DataElement(_CONTENT_SEQUENCE, "SQ", items)


def _with_items(group: pydicom.Dataset, items: list[pydicom.Dataset]) -> pydicom.Dataset:
    """``group`` (a copied measurement group holding its tracking and algorithm items) with
    ``items`` after those."""
    group[_CONTENT_SEQUENCE].value.extend(items)
    return group


_NUMERIC_VALUE = pydicom.tag.Tag("NumericValue")
_FLOATING_POINT_VALUE = pydicom.tag.Tag("FloatingPointValue")
_MEASURED_VALUE_SEQUENCE = pydicom.tag.Tag("MeasuredValueSequence")
_TEXT_VALUE = pydicom.tag.Tag("TextValue")
_UID = pydicom.tag.Tag("UID")
_GRAPHIC_DATA = pydicom.tag.Tag("GraphicData")
_PROTOTYPE_UID = "2.25.0"
_PROTOTYPE_SCORE = 0.5


class _Prototypes:
    """The items of one algorithm's findings reports, made once by highdicom's templates (the
    same functions :func:`_findings_content_with_templates` calls) and handed out as copies.

    Never hand out a prototype itself: a report may be changed after it is built (``_document``
    marks its items), and the next report would carry the change.
    """

    def __init__(self, algorithm: AlgorithmInfo) -> None:
        self.algorithm_id = _algorithm_identification(algorithm)
        language = hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE)
        procedure = hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported,
            value=codes.SCT.ImagingProcedure,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
        # The root's items before the image library, in MeasurementReport's order.
        self.header = [*language, *_device_context(algorithm), procedure]
        self.imaging_measurements = hd.sr.ContainerContentItem(
            name=codes.DCM.ImagingMeasurements,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        self._intended_use = _intended_use()[0]
        self._tracking = hd.sr.TrackingIdentifier(uid=_PROTOTYPE_UID, identifier="prototype")
        self._groups = {template: self._group(template) for template in ("1501", "1410")}
        self._scores: dict[FindingCode, pydicom.Dataset] = {}
        self._presences: dict[tuple[FindingCode, bool], pydicom.Dataset] = {}
        self._finding_types: dict[FindingCode, pydicom.Dataset] = {}

    def _group(self, template: str) -> pydicom.Dataset:
        """A measurement group's container with its tracking and algorithm items, as TID 1501
        and TID 1410 put them first (``_render_separately``'s continuity included)."""
        container = hd.sr.ContainerContentItem(
            name=hd.sr.CodedConcept(
                value="125007", scheme_designator="DCM", meaning="Measurement Group"
            ),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            template_id=template,
        )
        container.ContinuityOfContent = "SEPARATE"
        _set_items(container, [*self._tracking, *self.algorithm_id])
        return container

    def group(
        self, template: str, uid: str, identifier: str, finding_type: FindingCode | None = None
    ) -> pydicom.Dataset:
        """A copy of the group's container, tracked by ``identifier`` and ``uid``; a TID 1410
        group states its ``finding_type`` after its tracking items, as highdicom's template does."""
        group = copy_tree(self._groups[template])
        items = group[_CONTENT_SEQUENCE].value
        tracking_text, tracking_uid = items[0], items[1]
        tracking_text[_TEXT_VALUE] = DataElement(_TEXT_VALUE, "UT", str(identifier))
        tracking_uid[_UID] = DataElement(_UID, "UI", uid)
        if finding_type is not None:
            items.insert(2, copy_tree(self._finding_type(finding_type)))
        return group

    def _finding_type(self, code: FindingCode) -> pydicom.Dataset:
        item = self._finding_types.get(code)
        if item is None:
            item = hd.sr.CodeContentItem(
                name=hd.sr.CodedConcept(value="121071", scheme_designator="DCM", meaning="Finding"),
                value=_concept(code),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            self._finding_types[code] = item
        return item

    def intended_use(self) -> pydicom.Dataset:
        return copy_tree(self._intended_use)

    def prepare(self, codes: Iterable[FindingCode]) -> None:
        """Make the items of these findings now, as a worker's warm-up does, not in the first
        report that states them (about 30 ms for a 14-finding model)."""
        for code in codes:
            self._score_prototype(code)
            for present in (True, False):
                self._presence_prototype((code, present))

    def _score_prototype(self, code: FindingCode) -> pydicom.Dataset:
        prototype = self._scores.get(code)
        if prototype is None:
            prototype = _score(code, _PROTOTYPE_SCORE, self.algorithm_id)[0]
            self._scores[code] = prototype
        return prototype

    def _presence_prototype(self, key: tuple[FindingCode, bool]) -> pydicom.Dataset:
        prototype = self._presences.get(key)
        if prototype is None:
            prototype = _presence(*key, _PROTOTYPE_SCORE, self.algorithm_id)[0]
            self._presences[key] = prototype
        return prototype

    def score(self, finding: FindingResult) -> pydicom.Dataset:
        """The finding's TID 300 measurement with its score."""
        item = copy_tree(self._score_prototype(finding.score.code))
        _set_number(item, finding.score.probability)
        return item

    def presence(self, finding: FindingResult) -> pydicom.Dataset:
        """The finding's Present or Absent evaluation with its threshold."""
        item = copy_tree(self._presence_prototype((finding.score.code, finding.present)))
        _set_number(item[_CONTENT_SEQUENCE].value[0], float(finding.threshold))
        return item


def _set_graphic_data(item: pydicom.Dataset, region: HeatmapRegion) -> None:
    """A SCOORD item's coordinates, set as highdicom's ScoordContentItem sets them."""
    item[_GRAPHIC_DATA] = DataElement(_GRAPHIC_DATA, "FL", region.polygon().flatten().tolist())


def _set_number(item: pydicom.Dataset, value: float) -> None:
    """A NUM item's value, set as highdicom's NumContentItem sets it."""
    measured = item[_MEASURED_VALUE_SEQUENCE].value[0]
    measured[_NUMERIC_VALUE] = DataElement(_NUMERIC_VALUE, "DS", DS(value, auto_format=True))
    if isinstance(value, float):
        measured[_FLOATING_POINT_VALUE] = DataElement(_FLOATING_POINT_VALUE, "FD", value)
    else:
        del measured[_FLOATING_POINT_VALUE]


@functools.lru_cache(maxsize=16)
def _prototypes(algorithm: AlgorithmInfo) -> _Prototypes:
    """One algorithm's prototypes, made on its first report in this process."""
    return _Prototypes(algorithm)


def prepare_findings_reports(algorithm: AlgorithmInfo, codes: Iterable[FindingCode]) -> None:
    """Make the items of ``algorithm``'s findings reports for these findings now (a worker's
    warm-up), so that its first report is built as fast as the later ones."""
    _prototypes(algorithm).prepare(codes)


def report_series_description(version: int) -> str:
    """The findings report's series description; versions after the first say so."""
    if version < 1:
        raise ValueError(f"a report version starts at 1, not {version}")
    if version == 1:
        return REPORT_SERIES_DESCRIPTION
    return REPORT_SERIES_DESCRIPTION.replace(" - ", f" v{version} (amended) - ", 1)


def not_analysed_reason_code(reason: str) -> FindingCode:
    """The local code for a worker's reason (``NotAnalysableError`` text); OTHER_REASON if none fits."""
    text = reason.lower()
    for words, code in _REASON_RULES:
        if all(word in text for word in words):
            return code
    return OTHER_REASON


def _reason_text(reason: object, uid: str) -> str:
    """The reason as plain ASCII text (any source character set can carry it), or ValueError."""
    if not isinstance(reason, str):
        raise TypeError(f"the reason for {uid} must be a str")
    return ascii_text(reason, f"the reason for {uid}", _REASON_MAX)


def build_not_analysed_report(
    *,
    sources: Sequence[pydicom.Dataset],
    reasons: Mapping[str, str],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    content_datetime: datetime.datetime | None = None,
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR (TID 1500) saying the node received these images but did not analyse them.

    ``reasons`` maps every source's SOP Instance UID to the worker's reason; each image's group
    carries the coded reason (:func:`not_analysed_reason_code`, local ``99RADLIGHT`` codes) and the
    reason's text. ``sources`` are parsed datasets of one study; an image (Rows and Columns) is
    listed in the Image Library and referenced by its group, any other instance (no pixel data)
    only as evidence, with its SOP Instance UID in the reason's text. UIDs and times as in
    :func:`build_findings_report`.
    """
    checked = _check_sources(sources, images_only=False)
    if not isinstance(reasons, Mapping):
        raise TypeError("reasons must be a mapping of source SOP Instance UID to reason")
    source_uids = [str(source.SOPInstanceUID) for source in checked]
    unknown = sorted(set(reasons) - set(source_uids))
    if unknown:
        raise ValueError(f"reasons given for images that are not sources: {unknown}")
    missing = [uid for uid in source_uids if uid not in reasons]
    if missing:
        raise ValueError(f"sources without a reason: {missing}")
    texts = {uid: _reason_text(reasons[uid], uid) for uid in source_uids}
    _check_document_ids(
        algorithm, series_instance_uid, sop_instance_uid, series_number, instance_number
    )
    when = resolve_content_datetime(content_datetime)

    views = [header_view(source) for source in checked]
    algorithm_id = _algorithm_identification(algorithm)
    groups = []
    for number, view in enumerate(views, start=1):
        source_uid = str(view.SOPInstanceUID)
        is_image = _is_image(view)
        comment = hd.sr.TextContentItem(
            name=_concept(COMMENT),
            value=texts[source_uid] if is_image else f"instance {source_uid}: {texts[source_uid]}",
            relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
        )
        reason = _with_children(
            hd.sr.QualitativeEvaluation(
                name=_concept(REASON_NOT_ANALYSED),
                value=_concept(not_analysed_reason_code(texts[source_uid])),
            ),
            [comment],
        )
        groups.append(
            _render_separately(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=deterministic_uid(sop_instance_uid, "not-analysed-group", source_uid),
                        identifier=f"{algorithm.name} not analysed, instance {number}",
                    ),
                    algorithm_id=algorithm_id,
                    qualitative_evaluations=[
                        hd.sr.QualitativeEvaluation(
                            name=_concept(ANALYSIS_STATUS), value=_concept(NOT_ANALYSED)
                        ),
                        reason,
                        _intended_use(),
                    ],
                    source_images=(
                        [hd.sr.SourceImageForMeasurementGroup.from_source_image(view)]
                        if is_image
                        else None
                    ),
                )
            )
        )
    library = [_library_view(view) for view in views if _is_image(view)]
    report = hd.sr.MeasurementReport(
        observation_context=_device_context(algorithm),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        referenced_images=library or None,
    )
    return _document(
        report=report,
        evidence=views,
        algorithm=algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
        series_description=NOT_ANALYSED_SERIES_DESCRIPTION,
        equipment_description="AI not-analysed report",
        when=when,
    )
