"""Secondary Capture overlays: a heatmap image per finding and a summary image per source.

The heatmap overlay shows where the model looked for one finding (its heatmap blended in colour);
the summary image outlines the region of every finding above its operating threshold, each in its
own colour (``overlay.SUMMARY_PALETTE``), so one image tells what was found and where.

Pixel matrix: the source's rows and columns, pixel for pixel, with a legend band appended BELOW
the image (Rows = source Rows + band height, Columns = source Columns). Burning the legend into
the image itself would hide anatomy (the costophrenic angles at the bottom, the apices at the
top) exactly where findings show; appending keeps every source pixel visible and keeps the
overlay registered with the source (pixel (r, c) of the source is pixel (r, c) of the overlay).
Pixel spacing is not copied: the overlay is for looking, not for measuring.
"""

import datetime
import re
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.encaps import generate_frames
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from pydicom.valuerep import DA, TM

from workers.results.common import (
    AI_RESULT_WARNING,
    AlgorithmInfo,
    FindingScore,
    algorithm_equipment,
    ascii_text,
    check_positive_int,
    check_source_image,
    check_uid,
    header_view,
    resolve_content_datetime,
    source_modality,
    stamp,
    tolerate_single_component_names,
)
from workers.results.iod_lookups import remember_iod_lookups
from workers.results.overlay import (
    SUMMARY_PALETTE,
    LegendText,
    OutlineColour,
    SummaryEntry,
    check_display_image,
    check_heatmap,
    compose_overlay,
    draw_outline,
    grey_to_rgb,
    outline_width_for,
    pixel_box,
    reduce_grey,
    reduce_heatmap,
    reduction_for,
    render_summary_legend,
    with_band,
)
from workers.results.regions import FindingResult, ImageFindings

# highdicom's IOD lookups were about a third of an SC's build (workers.results.iod_lookups).
remember_iod_lookups()

OVERLAY_SERIES_DESCRIPTION = "RadLight AI heatmap - not for primary diagnosis"
SUMMARY_SERIES_DESCRIPTION = "RadLight AI summary - not for primary diagnosis"
GROUNDED_SERIES_DESCRIPTION = "RadLight AI report regions - not for primary diagnosis"
NO_FINDING_TEXT = "No finding above its operating threshold"
# Lossless (uncompressed) by default; JPEG baseline (lossy, about ten times smaller) for
# destinations that ask for it.
SUPPORTED_TRANSFER_SYNTAXES = frozenset({ExplicitVRLittleEndian, JPEGBaseline8Bit})
# DICOM's defined term for the JPEG baseline process (PS3.3 C.7.6.1.1.5.1).
_JPEG_COMPRESSION_METHOD = "ISO_10918_1"
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
    """The words burned into the heatmap overlay: finding and score, model, and the warning."""
    return LegendText(
        title=f"{finding.display_label} {finding.probability:.2f}",
        detail=f"Model: {algorithm.title}",
        warning=AI_RESULT_WARNING,
    )


def _check_transfer_syntax(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("transfer_syntax_uid must be a str")
    if value not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer_syntax_uid {value!r} is not supported: use Explicit VR Little Endian "
            f"({ExplicitVRLittleEndian}) or JPEG Baseline ({JPEGBaseline8Bit})"
        )
    return value


def _check_max_side(max_side: object) -> int | None:
    if max_side is None:
        return None
    return check_positive_int(max_side, "max_side")


def _size_note(source_shape: tuple[int, int], shape: tuple[int, int]) -> tuple[str, str]:
    """How the derivation names the image under the colours and the pixels the legend follows:
    the source as it is, or reduced (the SR, SEG and GSPS keep the source's coordinates)."""
    if shape == source_shape:
        return "the source image", "the source pixels"
    return (
        f"the source image reduced from {source_shape[1]}x{source_shape[0]} to "
        f"{shape[1]}x{shape[0]} pixels",
        "the reduced image",
    )


def _check_common(
    *,
    algorithm: object,
    series_instance_uid: object,
    sop_instance_uid: object,
    series_number: object,
    instance_number: object,
    transfer_syntax_uid: object,
) -> None:
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError("algorithm must be an AlgorithmInfo")
    check_uid(series_instance_uid, "series_instance_uid")
    check_uid(sop_instance_uid, "sop_instance_uid")
    check_positive_int(series_number, "series_number")
    check_positive_int(instance_number, "instance_number")
    _check_transfer_syntax(transfer_syntax_uid)


def _secondary_capture(
    *,
    source: pydicom.Dataset,
    pixels: NDArray[np.uint8],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    when: datetime.datetime,
    body_part: str,
    series_description: str,
    image_comments: str,
    derivation: str,
    contribution: str,
    transfer_syntax_uid: str,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``pixels`` in ``source``'s study that references ``source``."""
    view = header_view(source)
    orientation = _source_orientation(view)
    lossy = transfer_syntax_uid == JPEGBaseline8Bit
    with tolerate_single_component_names():
        overlay = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=view,
            pixel_array=pixels,
            # highdicom's JPEG encoder takes RGB pixels and stores them as YCbCr, as DICOM wants.
            photometric_interpretation="YBR_FULL_422" if lossy else "RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=algorithm.manufacturer,
            patient_orientation=orientation or _PLACEHOLDER_ORIENTATION,
            transfer_syntax_uid=transfer_syntax_uid,
            contributing_equipment=[algorithm_equipment(algorithm, when, contribution)],
            series_description=series_description,
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
    overlay.ImageComments = image_comments
    overlay.DerivationDescription = derivation
    if lossy:
        frame = next(generate_frames(overlay.PixelData, number_of_frames=1))
        ratio = pixels.size / len(frame)
        overlay.LossyImageCompression = "01"
        overlay.LossyImageCompressionRatio = [f"{ratio:.2f}"]
        overlay.LossyImageCompressionMethod = [_JPEG_COMPRESSION_METHOD]
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
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    max_side: int | None = None,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``display_image`` with ``heatmap`` blended in and a legend band.

    ``display_image`` is the windowed MONOCHROME2 view of ``source`` (uint8, source Rows x
    Columns); ``heatmap`` is a float array of the same shape in [0, 1], or of the overlay's shape
    where ``max_side`` reduces it (made there, it is not resampled). The result joins the
    source's study and patient, references the source image, and says on its pixels and in its
    header that it is an AI result not for primary diagnosis. The caller chooses which findings
    get one (those above their operating threshold). ``content_datetime`` stamps every date and
    time in the object; leave it None for "now", pass it to get byte-identical rebuilds.
    ``body_part_examined`` defaults to the source's, else ``DEFAULT_BODY_PART``; the source's
    Laterality is copied when it has one (a chest is unpaired, so none is needed).
    ``transfer_syntax_uid`` is Explicit VR Little Endian (lossless, the default) or JPEG Baseline
    (lossy: Lossy Image Compression "01" with its ratio and method). ``max_side``, if given,
    caps the image's longest side: a larger source is shown reduced (area means), which the
    derivation description says; None keeps the source's size.
    """
    if not isinstance(finding, FindingScore):
        raise TypeError("finding must be a FindingScore")
    summary = (
        f"{finding.display_label} {finding.probability:.2f}; {algorithm.title}; "
        f"model sha256 {algorithm.sha256_prefix}; {AI_RESULT_WARNING}"
    )
    return _blended_overlay(
        source=source,
        display_image=display_image,
        heatmap=heatmap,
        legend=legend_text(finding, algorithm),
        what=f"Heatmap for {finding.display_label} (score {finding.probability:.4f})",
        summary=summary,
        series_description=OVERLAY_SERIES_DESCRIPTION,
        contribution=f"AI heatmap overlay. {summary}",
        algorithm=algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
        content_datetime=content_datetime,
        body_part_examined=body_part_examined,
        transfer_syntax_uid=transfer_syntax_uid,
        max_side=max_side,
    )


def build_sentence_overlay(
    *,
    source: pydicom.Dataset,
    display_image: NDArray[np.uint8],
    heatmap: NDArray[np.floating],
    sentence: str,
    sentence_number: int,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    content_datetime: datetime.datetime | None = None,
    max_side: int | None = None,
) -> hd.sc.SCImage:
    """Like :func:`build_heatmap_overlay`, for one sentence of the radiologist's report: the
    region the sentence speaks of blended over the source, the sentence in the legend."""
    words = ascii_text(sentence, "sentence")
    check_positive_int(sentence_number, "sentence_number")
    title = f"Report sentence {sentence_number}: {words}"
    short = title if len(title) <= 60 else title[:57] + "..."
    summary = f"{short}; {algorithm.title}; {AI_RESULT_WARNING}"
    return _blended_overlay(
        source=source,
        display_image=display_image,
        heatmap=heatmap,
        legend=LegendText(title=short, detail=f"Model: {algorithm.title}"),
        what=f"Region of report sentence {sentence_number}",
        summary=summary[:10240],
        series_description=GROUNDED_SERIES_DESCRIPTION,
        contribution=f"AI grounded report sentence. {summary}"[:1024],
        algorithm=algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
        content_datetime=content_datetime,
        body_part_examined=None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        max_side=max_side,
    )


def _blended_overlay(
    *,
    source: pydicom.Dataset,
    display_image: NDArray[np.uint8],
    heatmap: NDArray[np.floating],
    legend: LegendText,
    what: str,
    summary: str,
    series_description: str,
    contribution: str,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    content_datetime: datetime.datetime | None,
    body_part_examined: str | None,
    transfer_syntax_uid: str,
    max_side: int | None,
) -> hd.sc.SCImage:
    """The checked inputs, the blended pixels with their legend, and the SC around them."""
    check_source_image(source)
    image = check_display_image(display_image)
    expected_shape = (int(source.Rows), int(source.Columns))
    if image.shape != expected_shape:
        raise ValueError(
            f"display_image shape {image.shape} differs from the source's {expected_shape}"
        )
    reduction = reduction_for(expected_shape, _check_max_side(max_side))
    # The heatmap at the source's size, or already at the overlay's (workers.analysis).
    made_reduced = reduction.reduced and getattr(heatmap, "shape", None) == reduction.shape
    scores = check_heatmap(heatmap, reduction.shape if made_reduced else expected_shape)
    _check_common(
        algorithm=algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
        transfer_syntax_uid=transfer_syntax_uid,
    )
    when = resolve_content_datetime(content_datetime)
    body_part = _body_part(body_part_examined, source)

    pixels = compose_overlay(
        reduce_grey(image, reduction), reduce_heatmap(scores, reduction), legend
    )
    band_rows = pixels.shape[0] - reduction.shape[0]
    shown, below = _size_note(expected_shape, reduction.shape)
    derivation = (
        f"{what} made by "
        f"{algorithm.title} (model sha256 {algorithm.sha256}) with RadLight "
        f"{algorithm.software_version}, blended in colour over {shown}; a legend "
        f"band of {band_rows} rows is appended below {below}. "
        f"{AI_RESULT_WARNING}."
    )
    return _secondary_capture(
        source=source,
        pixels=pixels,
        algorithm=algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
        when=when,
        body_part=body_part,
        series_description=series_description,
        image_comments=summary,
        derivation=derivation,
        contribution=contribution,
        transfer_syntax_uid=transfer_syntax_uid,
    )


def _summary_entries(
    outlined: Sequence[tuple[FindingResult, OutlineColour]], not_shown: int
) -> list[SummaryEntry]:
    """The summary legend's finding lines: each outlined finding with its swatch, then the rest."""
    if not outlined:
        return [SummaryEntry(NO_FINDING_TEXT)]
    entries = []
    for finding, colour in outlined:
        text = (
            f"{finding.score.display_label} {finding.score.probability:.2f} "
            f"(threshold {finding.threshold:.2f})"
        )
        if finding.region is None:
            entries.append(SummaryEntry(f"{text} - no region"))
        else:
            entries.append(SummaryEntry(text, colour.rgb))
    if not_shown:
        entries.append(SummaryEntry(f"+{not_shown} more above their threshold (see the report)"))
    return entries


def build_summary_overlay(
    *,
    image: ImageFindings,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    content_datetime: datetime.datetime | None = None,
    max_findings: int = 5,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    body_part_examined: str | None = None,
    max_side: int | None = None,
) -> hd.sc.SCImage:
    """One RGB Secondary Capture per source: every present finding's region outlined in its colour.

    The windowed source (``image.display``, shown grey) keeps its pixels except on the outlines:
    the ``max_findings`` highest-scoring findings at or above their operating thresholds get
    their region (a box) outlined in ``SUMMARY_PALETTE`` order, the highest-scoring drawn on
    top. A legend band below lists each with its colour swatch, score and threshold, then the
    model and the warning; with no finding present it says ``NO_FINDING_TEXT`` and the image is
    still made, so the radiologist sees that the image was analysed. A present finding without
    a region is listed without a swatch. Other arguments as for ``build_heatmap_overlay``
    (``max_side``: the regions are outlined where they fall on the reduced image).
    """
    if not isinstance(image, ImageFindings):
        raise TypeError("image must be an ImageFindings")
    source = check_source_image(image.source, "image.source")
    full = check_display_image(image.display)
    reduction = reduction_for(full.shape, _check_max_side(max_side))
    display = reduce_grey(full, reduction)
    _check_common(
        algorithm=algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
        transfer_syntax_uid=transfer_syntax_uid,
    )
    if isinstance(max_findings, bool) or not isinstance(max_findings, int):
        raise TypeError("max_findings must be an int")
    if not 1 <= max_findings <= len(SUMMARY_PALETTE):
        raise ValueError(f"max_findings must be in [1, {len(SUMMARY_PALETTE)}] (one colour each)")
    when = resolve_content_datetime(content_datetime)
    body_part = _body_part(body_part_examined, source)

    present = image.present()
    outlined = list(zip(present[:max_findings], SUMMARY_PALETTE, strict=False))
    band = render_summary_legend(
        display.shape[1],
        _summary_entries(outlined, len(present) - len(outlined)),
        detail=f"Model: {algorithm.title}",
    )
    pixels = with_band(display.shape, band)
    rgb = grey_to_rgb(display, out=pixels[: display.shape[0]])
    width = outline_width_for(display.shape)
    for finding, colour in reversed(outlined):
        if finding.region is None:
            continue
        region, sx, sy = finding.region, reduction.x_scale, reduction.y_scale
        box = pixel_box(
            (region.x0 * sx, region.y0 * sy, region.x1 * sx, region.y1 * sy), display.shape
        )
        if box is not None:
            draw_outline(rgb, box, colour.rgb, width)

    described = [
        f"{f.score.display_label} {f.score.probability:.2f} "
        + (f"({colour.name})" if f.region is not None else "(no region)")
        for f, colour in outlined
    ]
    if len(present) > len(outlined):
        described.append(f"+{len(present) - len(outlined)} more above their threshold")
    listed = "; ".join(described) if described else NO_FINDING_TEXT
    comments = (
        f"{listed}; {algorithm.title}; model sha256 {algorithm.sha256_prefix}; {AI_RESULT_WARNING}"
    )
    shown, below = _size_note(full.shape, display.shape)
    derivation = (
        f"Summary of the findings at or above their operating thresholds made by "
        f"{algorithm.title} (model sha256 {algorithm.sha256}) with RadLight "
        f"{algorithm.software_version}: each finding's region (the box around its heatmap's "
        f"hot area) is outlined in its colour on {shown} ({listed}); a legend band "
        f"of {band.shape[0]} rows is appended below {below}. {AI_RESULT_WARNING}."
    )
    return _secondary_capture(
        source=source,
        pixels=pixels,
        algorithm=algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
        when=when,
        body_part=body_part,
        series_description=SUMMARY_SERIES_DESCRIPTION,
        image_comments=comments,
        derivation=derivation,
        contribution=f"AI summary image. {comments}",
        transfer_syntax_uid=transfer_syntax_uid,
    )
