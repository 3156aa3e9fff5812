"""The findings report: a TID 1500 Measurement Report in a Comprehensive SR, one group per image.

Structure (all through highdicom templates):

    TID 1500 Imaging Measurement Report
      language (TID 1204), device observer = the algorithm (TID 1001/1002/1004)
      procedure reported: SCT 363679005 "Imaging procedure"
      Image Library (TID 1600): every source image
      Imaging Measurements
        per source image, TID 1501 Measurement Group
          tracking identifier and UID (derived from the report's SOP Instance UID)
          source image (121112 "Source of Measurement")
          per finding, TID 300 Measurement: the finding's code = probability {probability},
            with TID 4019 Algorithm Identification (name, version, manufacturer, model sha256)
          qualitative evaluation "Intended use" = "NOT FOR PRIMARY DIAGNOSIS" (local code)

Comprehensive SR rather than Comprehensive 3D SR: there are no 3-D coordinates, and PACS and
viewers support Comprehensive SR far more widely.
"""

import datetime
from collections.abc import Mapping, Sequence

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.uid import SecondaryCaptureImageStorage

import radlight
from models.labels import LOCAL, FindingCode
from radlight.uids import deterministic_uid
from workers.results.common import (
    AlgorithmInfo,
    FindingScore,
    algorithm_equipment,
    check_positive_int,
    check_source_image,
    check_uid,
    header_view,
    resolve_content_datetime,
    stamp,
    tolerate_single_component_names,
)

REPORT_SERIES_DESCRIPTION = "RadLight AI findings - not for primary diagnosis"
PROBABILITY_UNIT = FindingCode("{probability}", "UCUM", "probability")
INTENDED_USE = FindingCode("INTENDED_USE", LOCAL, "Intended use")
NOT_FOR_PRIMARY_DIAGNOSIS_CODE = FindingCode(
    "NOT_PRIMARY_DX", LOCAL, radlight.NOT_FOR_PRIMARY_DIAGNOSIS
)
_PROJECTION_MODALITIES = frozenset({"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"})
_CROSS_SECTIONAL_MODALITIES = frozenset({"CT", "MR", "PT"})
_NEUTRAL_MODALITY = "OT"


def _concept(code: FindingCode) -> hd.sr.CodedConcept:
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


def _check_findings(
    sources: Sequence[pydicom.Dataset], findings: Mapping[str, Sequence[FindingScore]]
) -> None:
    """Every source has findings, every finding belongs to a source, no label twice per image."""
    if not isinstance(findings, Mapping):
        raise TypeError("findings must be a mapping of source SOP Instance UID to scores")
    source_uids = [str(source.SOPInstanceUID) for source in sources]
    unknown = sorted(set(findings) - set(source_uids))
    if unknown:
        raise ValueError(f"findings given for images that are not sources: {unknown}")
    for uid in source_uids:
        scores = findings.get(uid)
        if not scores:
            raise ValueError(f"source {uid} has no findings")
        labels: set[str] = set()
        for score in scores:
            if not isinstance(score, FindingScore):
                raise TypeError("findings must hold FindingScore items")
            if score.label in labels:
                raise ValueError(f"finding {score.label!r} appears twice for source {uid}")
            labels.add(score.label)


def _check_sources(sources: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    if isinstance(sources, pydicom.Dataset) or not isinstance(sources, Sequence):
        raise TypeError("sources must be a sequence of pydicom Datasets")
    if not sources:
        raise ValueError("sources must not be empty")
    checked = [check_source_image(source, f"sources[{i}]") for i, source in enumerate(sources)]
    study_uids = {str(source.StudyInstanceUID) for source in checked}
    if len(study_uids) != 1:
        raise ValueError("all sources must belong to one study")
    sop_uids = [str(source.SOPInstanceUID) for source in checked]
    if len(set(sop_uids)) != len(sop_uids):
        raise ValueError("sources must not repeat an image")
    return checked


def _check_overlays(overlays: Sequence[pydicom.Dataset], study_uid: str) -> list[pydicom.Dataset]:
    if isinstance(overlays, pydicom.Dataset) or not isinstance(overlays, Sequence):
        raise TypeError("overlays must be a sequence of datasets")
    checked = []
    for i, overlay in enumerate(overlays):
        check_source_image(overlay, f"overlays[{i}]")
        if overlay.SOPClassUID != SecondaryCaptureImageStorage:
            raise ValueError(f"overlays[{i}] is not a Secondary Capture image")
        if overlay.StudyInstanceUID != study_uid:
            raise ValueError(f"overlays[{i}] belongs to another study than the sources")
        checked.append(overlay)
    return checked


def build_findings_report(
    *,
    sources: Sequence[pydicom.Dataset],
    findings: Mapping[str, Sequence[FindingScore]],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    overlays: Sequence[hd.sc.SCImage] = (),
    content_datetime: datetime.datetime | None = None,
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR (TID 1500) with each source image's finding probabilities.

    ``findings`` maps each source's SOP Instance UID to its scores. ``overlays`` (heatmaps of the
    same study) are listed as evidence so that a PACS can find them from the report. Tracking UIDs
    derive from ``sop_instance_uid``, the device observer UID from the algorithm's identity, and
    every date and time from ``content_datetime`` (None means now); with an explicit one, the same
    inputs give the same bytes. The report is PRELIMINARY and UNVERIFIED: no person has read it.
    """
    checked_sources = _check_sources(sources)
    _check_findings(checked_sources, findings)
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError("algorithm must be an AlgorithmInfo")
    check_uid(series_instance_uid, "series_instance_uid")
    check_uid(sop_instance_uid, "sop_instance_uid")
    check_positive_int(series_number, "series_number")
    check_positive_int(instance_number, "instance_number")
    study_uid = str(checked_sources[0].StudyInstanceUID)
    checked_overlays = _check_overlays(overlays, study_uid)
    when = resolve_content_datetime(content_datetime)

    views = [header_view(source) for source in checked_sources]
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=deterministic_uid(
            "device-observer", algorithm.name, algorithm.version, algorithm.sha256
        ),
        name=algorithm.name,
        manufacturer_name=algorithm.manufacturer,
        model_name=algorithm.title,
    )
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    algorithm_id = _algorithm_identification(algorithm)
    intended_use = hd.sr.QualitativeEvaluation(
        name=_concept(INTENDED_USE), value=_concept(NOT_FOR_PRIMARY_DIAGNOSIS_CODE)
    )
    unit = _concept(PROBABILITY_UNIT)
    groups = []
    for number, view in enumerate(views, start=1):
        source_uid = str(view.SOPInstanceUID)
        measurements = [
            hd.sr.Measurement(
                name=_concept(score.code),
                value=score.probability,
                unit=unit,
                algorithm_id=algorithm_id,
            )
            for score in findings[source_uid]
        ]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=deterministic_uid(sop_instance_uid, "measurement-group", source_uid),
                    identifier=f"{algorithm.name} findings, image {number}",
                ),
                algorithm_id=algorithm_id,
                measurements=measurements,
                qualitative_evaluations=[intended_use],
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(view)],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        referenced_images=[_library_view(view) for view in views],
    )
    with tolerate_single_component_names():
        document = hd.sr.ComprehensiveSR(
            evidence=[*views, *checked_overlays],
            content=report,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=algorithm.manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
            contributing_equipment=[
                algorithm_equipment(
                    algorithm,
                    when,
                    f"AI findings report by {algorithm.title} "
                    f"(model sha256 {algorithm.sha256}). {radlight.NOT_FOR_PRIMARY_DIAGNOSIS}",
                )
            ],
            coding_schemes=[
                CodingSchemeIdentificationItem(
                    designator=LOCAL,
                    name="RadLight local codes",
                    responsible_organization=algorithm.manufacturer,
                )
            ],
            series_description=REPORT_SERIES_DESCRIPTION,
            manufacturer_model_name=algorithm.name,
            software_versions=[algorithm.version, f"RadLight {algorithm.software_version}"],
            content_date=when.date(),
            content_time=when.time(),
        )
    stamp(document, when)
    return document
