"""The heatmap overlay: an RGB Secondary Capture that shows where the model looked for one finding.

Pixel matrix: the source's rows and columns, pixel for pixel, with a legend band appended BELOW
the image (Rows = source Rows + band height, Columns = source Columns). Burning the legend into
the image itself would hide anatomy (the costophrenic angles at the bottom, the apices at the
top) exactly where findings show; appending keeps every source pixel visible and keeps the
overlay registered with the source (pixel (r, c) of the source is pixel (r, c) of the overlay).
Pixel spacing is not copied: the overlay is for looking, not for measuring.
"""

import datetime
import re

import highdicom as hd
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

import radlight
from workers.results.common import (
    AlgorithmInfo,
    FindingScore,
    algorithm_equipment,
    check_positive_int,
    check_source_image,
    check_uid,
    header_view,
    resolve_content_datetime,
    source_modality,
    stamp,
    tolerate_single_component_names,
)
from workers.results.overlay import (
    LegendText,
    check_display_image,
    check_heatmap,
    compose_overlay,
)

OVERLAY_SERIES_DESCRIPTION = "RadLight AI heatmap - not for primary diagnosis"
# DICOM "WSD" (workstation): the image was made by software, not captured from a video or film.
_CONVERSION_TYPE = "WSD"
_ORIENTATION_LETTERS = frozenset("APLRHF")
# highdicom demands an orientation for a PATIENT coordinate system; when the source has none we
# pass this placeholder and then empty the attribute (type 2) instead of guessing a view.
_PLACEHOLDER_ORIENTATION = ("L", "F")
# RadLight's models analyse chest radiographs only and the pipeline refuses other images before any
# result is built, so an overlay whose source names no body part shows the chest.
DEFAULT_BODY_PART = "CHEST"
_BODY_PART = re.compile(r"^[A-Z0-9_ ]{1,16}$")


def _source_orientation(source: pydicom.Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is two well-formed values, else None."""
    value = source.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    row, column = str(value[0]), str(value[1])
    if row and column and set(row + column) <= _ORIENTATION_LETTERS:
        return row, column
    return None


def _body_part(explicit: str | None, source: pydicom.Dataset) -> str:
    """The overlay's Body Part Examined: the caller's, the source's, or the chest."""
    if explicit is not None:
        if not isinstance(explicit, str) or _BODY_PART.match(explicit) is None:
            raise ValueError(f"body_part_examined is not a DICOM CS value: {explicit!r}")
        return explicit
    value = source.get("BodyPartExamined")
    if isinstance(value, str) and _BODY_PART.match(value) is not None:
        return value
    return DEFAULT_BODY_PART


def legend_text(finding: FindingScore, algorithm: AlgorithmInfo) -> LegendText:
    """The words burned into the overlay: finding and score, model, and the warning."""
    return LegendText(
        title=f"{finding.display_label} {finding.probability:.2f}",
        detail=f"Model: {algorithm.title}",
        warning=radlight.NOT_FOR_PRIMARY_DIAGNOSIS,
    )


def build_heatmap_overlay(
    *,
    source: pydicom.Dataset,
    display_image: NDArray[np.uint8],
    heatmap: NDArray[np.floating],
    finding: FindingScore,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    content_datetime: datetime.datetime | None = None,
    body_part_examined: str | None = None,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``display_image`` with ``heatmap`` blended in and a legend band.

    ``display_image`` is the windowed MONOCHROME2 view of ``source`` (uint8, source Rows x
    Columns); ``heatmap`` is a float array of the same shape in [0, 1]. The result joins the
    source's study and patient, references the source image, and says on its pixels and in its
    header that it is not for primary diagnosis. ``content_datetime`` stamps every date and time
    in the object; leave it None for "now", pass it to get byte-identical rebuilds.
    ``body_part_examined`` defaults to the source's, else ``DEFAULT_BODY_PART``; the source's
    Laterality is copied when it has one (a chest is unpaired, so none is needed).
    """
    check_source_image(source)
    image = check_display_image(display_image)
    expected_shape = (int(source.Rows), int(source.Columns))
    if image.shape != expected_shape:
        raise ValueError(
            f"display_image shape {image.shape} differs from the source's {expected_shape}"
        )
    scores = check_heatmap(heatmap, expected_shape)
    if not isinstance(finding, FindingScore):
        raise TypeError("finding must be a FindingScore")
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError("algorithm must be an AlgorithmInfo")
    check_uid(series_instance_uid, "series_instance_uid")
    check_uid(sop_instance_uid, "sop_instance_uid")
    check_positive_int(series_number, "series_number")
    check_positive_int(instance_number, "instance_number")
    when = resolve_content_datetime(content_datetime)
    body_part = _body_part(body_part_examined, source)

    pixels = compose_overlay(image, scores, legend_text(finding, algorithm))
    band_rows = pixels.shape[0] - expected_shape[0]
    summary = (
        f"{finding.display_label} {finding.probability:.2f}; {algorithm.title}; "
        f"model sha256 {algorithm.sha256_prefix}; {radlight.NOT_FOR_PRIMARY_DIAGNOSIS}"
    )
    derivation = (
        f"Heatmap for {finding.display_label} (score {finding.probability:.4f}) made by "
        f"{algorithm.title} (model sha256 {algorithm.sha256}) with RadLight "
        f"{algorithm.software_version}, blended in colour over the source image; a legend "
        f"band of {band_rows} rows is appended below the source pixels. "
        f"{radlight.NOT_FOR_PRIMARY_DIAGNOSIS}."
    )
    view = header_view(source)
    orientation = _source_orientation(view)
    with tolerate_single_component_names():
        overlay = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=view,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=algorithm.manufacturer,
            patient_orientation=orientation or _PLACEHOLDER_ORIENTATION,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=[
                algorithm_equipment(algorithm, when, f"AI heatmap overlay. {summary}")
            ],
            series_description=OVERLAY_SERIES_DESCRIPTION,
            manufacturer_model_name=algorithm.name,
            software_versions=[algorithm.version, f"RadLight {algorithm.software_version}"],
            content_date=when.date(),
            content_time=when.time(),
        )
    if orientation is None:
        overlay["PatientOrientation"].value = None
    modality = source_modality(view)
    if modality is not None:
        overlay.Modality = modality
    overlay.BodyPartExamined = body_part
    laterality = view.get("Laterality")
    if laterality in ("R", "L"):
        overlay.Laterality = laterality
    overlay.ConversionType = _CONVERSION_TYPE
    overlay.BurnedInAnnotation = "YES"
    overlay.ImageComments = summary
    overlay.DerivationDescription = derivation
    references = hd.ReferencedImageSequence(referenced_images=[view])
    for item in references:
        item.PurposeOfReferenceCodeSequence = [
            hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
        ]
    overlay.SourceImageSequence = references
    overlay.DateOfSecondaryCapture = DA(when.date())
    overlay.TimeOfSecondaryCapture = TM(when.time())
    stamp(overlay, when)
    return overlay
