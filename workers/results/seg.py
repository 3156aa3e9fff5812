"""The probability map: a FRACTIONAL (PROBABILITY) DICOM Segmentation of one source image.

One segment per present finding that has a heatmap, highest score first (segment 1 is the top
finding). Each segment's frame is the finding's heatmap at the source's resolution, pixel for pixel
(a 1024x1024 chest X-ray gives 1 MiB per segment at 8 bits; no downscale is needed), quantised by
highdicom to 0..255 (Maximum Fractional Value 255, so one step is 1/255).

The sources RadLight sees are often Secondary Capture or DX images without a Frame of Reference,
Pixel Spacing or Patient Orientation. highdicom then makes a segmentation without a Frame of
Reference and without plane position, orientation or pixel measures (a 2-D projection image has
none to copy); its frames are registered to the source by pixel correspondence, through the
Derivation Image / Source Image references. Patient Orientation (type 2C in the General Image
module once there is no Image Orientation) is written empty rather than guessed.
"""

import datetime

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from numpy.typing import NDArray
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

import radlight
from models.labels import LOCAL, FindingCode
from radlight.uids import deterministic_uid
from workers.results.common import (
    AlgorithmInfo,
    algorithm_equipment,
    check_positive_int,
    check_source_image,
    check_uid,
    header_view,
    resolve_content_datetime,
    stamp,
    tolerate_single_component_names,
)
from workers.results.iod_lookups import remember_iod_lookups
from workers.results.regions import FindingResult, ImageFindings

# highdicom's IOD lookups were about a third of an SC's build (workers.results.iod_lookups).
remember_iod_lookups()

SEGMENTATION_SERIES_DESCRIPTION = "RadLight AI probability map - not for primary diagnosis"
SEGMENTATION_CONTENT_LABEL = "RADLIGHT_AI"
MAX_FRACTIONAL_VALUE = 255
# CID 7150 "Segmentation Property Categories": the finding is an altered structure, coded by type.
MORPHOLOGICALLY_ALTERED_STRUCTURE = hd.sr.CodedConcept(
    value="49755003", scheme_designator="SCT", meaning="Morphologically Altered Structure"
)


def _concept(code: FindingCode) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(
        value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning
    )


def check_segment_heatmap(
    heatmap: object, shape: tuple[int, int], what: str
) -> NDArray[np.float32]:
    """A finite 2-D float heatmap of ``shape`` with values in [0, 1], as float32; else ValueError."""
    if not isinstance(heatmap, np.ndarray):
        raise TypeError(f"{what} must be a numpy array")
    if heatmap.shape != shape:
        raise ValueError(f"{what} has shape {heatmap.shape}, the source is {shape}")
    if not np.issubdtype(heatmap.dtype, np.floating):
        raise ValueError(f"{what} must be a float array, got {heatmap.dtype}")
    values = heatmap.astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"{what} has NaN or infinite values")
    if float(values.min()) < 0.0 or float(values.max()) > 1.0:
        raise ValueError(f"{what} values must lie in [0, 1]")
    return values


def _segment_findings(image: ImageFindings) -> list[FindingResult]:
    """The findings that get a segment: present ones with a heatmap, highest score first."""
    return [finding for finding in image.present() if finding.heatmap is not None]


def _segment_description(
    number: int, finding: FindingResult, algorithm: AlgorithmInfo
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=finding.score.display_label,
        segmented_property_category=MORPHOLOGICALLY_ALTERED_STRUCTURE,
        segmented_property_type=_concept(finding.score.code),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=algorithm.version,
            parameters={"model sha256": algorithm.sha256},
        ),
    )


def build_probability_segmentation(
    *,
    image: ImageFindings,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    content_datetime: datetime.datetime | None = None,
) -> hd.seg.Segmentation | None:
    """A fractional (probability) Segmentation of ``image.source`` with one segment per present
    finding that has a heatmap; None when there is no such finding.

    Each heatmap must be a float array of the source's Rows x Columns with values in [0, 1]
    (ValueError otherwise). ``content_datetime`` stamps every date and time in the object; None
    means now, an explicit one gives byte-identical rebuilds.
    """
    if not isinstance(image, ImageFindings):
        raise TypeError("image must be an ImageFindings")
    source = check_source_image(image.source, "image.source")
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError("algorithm must be an AlgorithmInfo")
    check_uid(series_instance_uid, "series_instance_uid")
    check_uid(sop_instance_uid, "sop_instance_uid")
    check_positive_int(series_number, "series_number")
    check_positive_int(instance_number, "instance_number")
    when = resolve_content_datetime(content_datetime)
    shape = (int(source.Rows), int(source.Columns))
    # Every heatmap given is checked, also those of absent findings: a wrong one is a caller's bug.
    for finding in image.findings:
        if finding.heatmap is not None:
            check_segment_heatmap(finding.heatmap, shape, f"heatmap of {finding.score.label}")
    findings = _segment_findings(image)
    if not findings:
        return None

    frames = np.stack(
        [
            check_segment_heatmap(finding.heatmap, shape, finding.score.label)
            for finding in findings
        ],
        axis=-1,
    )[np.newaxis]  # (1 frame, rows, columns, segments)
    descriptions = [
        _segment_description(number, finding, algorithm)
        for number, finding in enumerate(findings, start=1)
    ]
    summary = "; ".join(
        f"{finding.score.display_label} {finding.score.probability:.2f}" for finding in findings
    )
    coding_schemes = []
    if any(finding.score.code.scheme_designator == LOCAL for finding in findings):
        coding_schemes.append(
            CodingSchemeIdentificationItem(
                designator=LOCAL,
                name="RadLight local codes",
                responsible_organization=algorithm.manufacturer,
            )
        )
    view = header_view(source)
    with tolerate_single_component_names():
        segmentation = hd.seg.Segmentation(
            source_images=[view],
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=MAX_FRACTIONAL_VALUE,
            segment_descriptions=descriptions,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=algorithm.manufacturer,
            manufacturer_model_name=algorithm.name,
            # highdicom annotates a 1-tuple, but SoftwareVersions is multi-valued (as in sc.py).
            software_versions=[  # type: ignore[arg-type]
                algorithm.version,
                f"RadLight {algorithm.software_version}",
            ],
            device_serial_number=algorithm.sha256_prefix,
            content_label=SEGMENTATION_CONTENT_LABEL,
            content_description=f"AI probability map; {radlight.NOT_FOR_PRIMARY_DIAGNOSIS}"[:64],
            transfer_syntax_uid=ExplicitVRLittleEndian,
            omit_empty_frames=False,
            contributing_equipment=[
                algorithm_equipment(
                    algorithm,
                    when,
                    f"AI probability map ({summary}) by {algorithm.title} "
                    f"(model sha256 {algorithm.sha256}). {radlight.NOT_FOR_PRIMARY_DIAGNOSIS}",
                )
            ],
            coding_schemes=coding_schemes or None,
            series_description=SEGMENTATION_SERIES_DESCRIPTION,
            content_date=when.date(),
            content_time=when.time(),
        )
    # Type 2C once there is no Image Orientation (Patient): present, empty rather than guessed.
    segmentation.PatientOrientation = None
    # highdicom draws this UID at random; derive it so a rebuild gives the same bytes.
    dimension_uid = deterministic_uid(sop_instance_uid, "segmentation-dimension-organization")
    segmentation.DimensionOrganizationSequence[0].DimensionOrganizationUID = dimension_uid
    for item in segmentation.DimensionIndexSequence:
        item.DimensionOrganizationUID = dimension_uid
    segmentation.ContentDate = DA(when.date())
    segmentation.ContentTime = TM(when.time())
    stamp(segmentation, when)
    return segmentation
