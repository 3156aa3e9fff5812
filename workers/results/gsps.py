"""The region annotations: a Grayscale Softcopy Presentation State (GSPS) on one source image.

For viewers that cannot fuse an SC overlay or a SEG, the GSPS draws each present finding's region
on the source image itself, in one graphic layer (``GRAPHIC_LAYER``):

- a closed POLYLINE along the region's box, in PIXEL units (DICOM pixel coordinates: (0, 0) is
  the top-left corner of the top-left pixel, so the box's x1/y1 edges lie at x1/y1);
- a text label ``<finding> <score>`` in a bounding box just above the region's top-left corner
  (just inside it where the region touches the top), anchored at that corner;
- a text object in DISPLAY units at the top left: "AI result - not for primary diagnosis".

The same box outlines are also written as a graphic overlay plane (group 6000) activated in that
layer, so that the outlines reach software that renders activated overlays but not vector
graphics (dcmtk's dcmpstat hands such overlays out as bitmaps). highdicom has no API for overlay
planes, so those few attributes are set after construction.

The image displays as the source does: the source's first window (and VOI LUT function) when it
has one, its VOI LUT when it has one, else the full range of its stored values; the Modality LUT is
copied from the source by highdicom; MONOCHROME1 sources get an INVERSE presentation LUT.

Patient Name is copied as it is, empty when the source has none. dcmtk's presentation state reader
refuses a GSPS with an empty Patient Name (dcmpstat: "patientName absent or empty"), although the
attribute is type 2; a name is never invented for it.
"""

import datetime
import math
import re

import highdicom as hd
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.pixels.utils import pack_bits
from pydicom.tag import Tag
from pydicom.valuerep import DA, TM

import radlight
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
from workers.results.regions import FindingResult, HeatmapRegion, ImageFindings

# highdicom's IOD lookups were about a third of an SC's build (workers.results.iod_lookups).
remember_iod_lookups()

ANNOTATION_SERIES_DESCRIPTION = "RadLight AI regions - not for primary diagnosis"
GRAPHIC_LAYER = "RADLIGHT_AI"
CONTENT_LABEL = "RADLIGHT_AI"
DISCLAIMER = "AI result - not for primary diagnosis"
OVERLAY_GROUP = 0x6000
# Yellow (CIELab of sRGB 255/255/0): stands out on a grey radiograph.
LAYER_COLOR = hd.color.CIELabColor(97.14, -21.55, 94.48)
DEFAULT_BODY_PART = "CHEST"
_BODY_PART = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_VOI_LUT_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})
_GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})


def check_region(region: object, rows: int, columns: int, what: str) -> HeatmapRegion:
    """A region that lies inside a ``rows`` x ``columns`` image (pixel edges 0..Columns/Rows)."""
    if not isinstance(region, HeatmapRegion):
        raise TypeError(f"{what} must be a HeatmapRegion")
    values = (region.x0, region.y0, region.x1, region.y1)
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"{what} has non-finite coordinates")
    if region.x0 < 0 or region.y0 < 0 or region.x1 > columns or region.y1 > rows:
        raise ValueError(f"{what} {values} lies outside the {rows}x{columns} image")
    return region


def _first_number(value: object) -> float | None:
    """The first value of a DS (possibly multi-valued) element as a finite float, else None."""
    if value is None or isinstance(value, str | bytes):
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _first_text(value: object) -> str | None:
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        value = value[0] if value else None
    if isinstance(value, str) and value.strip() and len(value) <= 64 and "\\" not in value:
        return value
    return None


def _full_range_window(source: pydicom.Dataset) -> tuple[float, float]:
    """Center and width that map every stored value of ``source`` linearly onto the display."""
    bits = int(source.get("BitsStored") or source.get("BitsAllocated") or 8)
    low = -(2 ** (bits - 1)) if source.get("PixelRepresentation") == 1 else 0
    high = low + 2**bits - 1
    slope = _first_number(source.get("RescaleSlope")) or 1.0
    intercept = _first_number(source.get("RescaleIntercept")) or 0.0
    first, last = sorted((low * slope + intercept, high * slope + intercept))
    width = last - first + 1.0
    return first + width / 2.0, width


def _voi_transformations(
    source: pydicom.Dataset,
) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """The window the source displays with; None lets highdicom copy the source's VOI LUT."""
    center = _first_number(source.get("WindowCenter"))
    width = _first_number(source.get("WindowWidth"))
    if center is not None and width is not None and width >= 1.0:
        function = source.get("VOILUTFunction")
        return [
            hd.pr.SoftcopyVOILUTTransformation(
                # One-item lists: highdicom splits a plain-str explanation into characters.
                window_center=[center],
                window_width=[width],
                window_explanation=[
                    _first_text(source.get("WindowCenterWidthExplanation")) or "SOURCE WINDOW"
                ],
                voi_lut_function=function if function in _VOI_LUT_FUNCTIONS else None,
            )
        ]
    if "VOILUTSequence" in source:
        return None
    center, width = _full_range_window(source)
    return [
        hd.pr.SoftcopyVOILUTTransformation(
            window_center=[center], window_width=[width], window_explanation=["FULL RANGE"]
        )
    ]


def _body_part(source: pydicom.Dataset) -> str:
    value = source.get("BodyPartExamined")
    if isinstance(value, str) and _BODY_PART.match(value) is not None:
        return value
    return DEFAULT_BODY_PART


def region_label(finding: FindingResult) -> str:
    """The text shown at a region: finding and score, e.g. ``Cardiomegaly 0.54``."""
    return f"{finding.score.display_label} {finding.score.probability:.2f}"


def _label_box(
    region: HeatmapRegion, text: str, rows: int, columns: int
) -> tuple[float, float, float, float]:
    """A text box just above the region's top-left corner (inside it at the image's top edge)."""
    height = float(max(12, round(rows / 40)))
    width = min(float(columns), len(text) * height * 0.6)
    left = min(region.x0, columns - width)
    top = region.y0 - height if region.y0 >= height else region.y0
    return left, top, left + width, min(float(rows), top + height)


def outline_mask(regions: list[HeatmapRegion], rows: int, columns: int) -> NDArray[np.bool_]:
    """The regions' box outlines as a bitmap, drawn inward from each box edge."""
    thickness = max(1, round(max(rows, columns) / 512))
    mask = np.zeros((rows, columns), dtype=bool)
    for region in regions:
        left, top = math.floor(region.x0), math.floor(region.y0)
        right = min(columns, math.ceil(region.x1))
        bottom = min(rows, math.ceil(region.y1))
        mask[top : top + thickness, left:right] = True
        mask[max(top, bottom - thickness) : bottom, left:right] = True
        mask[top:bottom, left : left + thickness] = True
        mask[top:bottom, max(left, right - thickness) : right] = True
    return mask


def _add_outline_overlay(state: pydicom.Dataset, mask: NDArray[np.bool_]) -> None:
    """Overlay Plane and Overlay Activation modules: the outlines as graphic overlay 6000."""
    rows, columns = mask.shape
    for element, vr, value in (
        (0x0010, "US", rows),
        (0x0011, "US", columns),
        (0x0022, "LO", "RadLight AI finding regions"),
        (0x0040, "CS", "G"),
        (0x0050, "SS", [1, 1]),
        (0x0100, "US", 1),
        (0x0102, "US", 0),
        (0x1001, "CS", GRAPHIC_LAYER),
        (0x1500, "LO", "RADLIGHT_AI_REGIONS"),
        (0x3000, "OW", pack_bits(mask.ravel())),
    ):
        state.add_new(Tag(OVERLAY_GROUP, element), vr, value)


def build_region_annotations(
    *,
    image: ImageFindings,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    content_datetime: datetime.datetime | None = None,
) -> hd.pr.GrayscaleSoftcopyPresentationState | None:
    """A GSPS on ``image.source`` outlining and labelling each present finding's region; None when
    no present finding has a region.

    Every region given must lie inside the source image (ValueError otherwise), and the source must
    be a grayscale image. ``content_datetime`` stamps every date and time in the object; None means
    now, an explicit one gives byte-identical rebuilds.
    """
    if not isinstance(image, ImageFindings):
        raise TypeError("image must be an ImageFindings")
    source = check_source_image(image.source, "image.source")
    if source.get("PhotometricInterpretation") not in _GRAYSCALE:
        raise ValueError("a GSPS applies to MONOCHROME1 or MONOCHROME2 images only")
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError("algorithm must be an AlgorithmInfo")
    check_uid(series_instance_uid, "series_instance_uid")
    check_uid(sop_instance_uid, "sop_instance_uid")
    check_positive_int(series_number, "series_number")
    check_positive_int(instance_number, "instance_number")
    when = resolve_content_datetime(content_datetime)
    rows, columns = int(source.Rows), int(source.Columns)
    for finding in image.findings:
        if finding.region is not None:
            check_region(finding.region, rows, columns, f"region of {finding.score.label}")
    findings = [finding for finding in image.present() if finding.region is not None]
    if not findings:
        return None

    view = header_view(source)
    layer = hd.pr.GraphicLayer(
        layer_name=GRAPHIC_LAYER,
        order=1,
        description=ANNOTATION_SERIES_DESCRIPTION,
        display_color=LAYER_COLOR,
    )
    graphics = []
    texts = []
    for finding in findings:
        region = finding.region
        assert region is not None  # filtered above; narrows the type
        tracking_uid = deterministic_uid(sop_instance_uid, "gsps-region", finding.score.label)
        graphics.append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=region.polygon().astype(np.float64),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                tracking_id=finding.score.label,
                tracking_uid=tracking_uid,
            )
        )
        text = region_label(finding)
        texts.append(
            hd.pr.TextObject(
                text_value=text,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=_label_box(region, text, rows, columns),
                anchor_point=(region.x0, region.y0),
                anchor_point_visible=False,
                text_justification=hd.pr.TextJustificationValues.LEFT,
            )
        )
    texts.append(
        hd.pr.TextObject(
            text_value=f"{DISCLAIMER} ({algorithm.title})",
            units=hd.pr.AnnotationUnitsValues.DISPLAY,
            bounding_box=(0.01, 0.01, 0.99, 0.05),
            text_justification=hd.pr.TextJustificationValues.LEFT,
        )
    )
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[view],
        graphic_layer=layer,
        graphic_objects=graphics,
        text_objects=texts,
    )
    photometric = source.PhotometricInterpretation
    presentation_lut = hd.PresentationLUTTransformation(
        presentation_lut_shape=(
            hd.PresentationLUTShapeValues.INVERSE
            if photometric == "MONOCHROME1"
            else hd.PresentationLUTShapeValues.IDENTITY
        )
    )
    summary = "; ".join(region_label(finding) for finding in findings)
    with tolerate_single_component_names():
        state = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=[view],
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
            content_label=CONTENT_LABEL,
            content_description=f"AI regions; {radlight.NOT_FOR_PRIMARY_DIAGNOSIS}"[:64],
            graphic_annotations=[annotation],
            graphic_layers=[layer],
            voi_lut_transformations=_voi_transformations(view),
            presentation_lut_transformation=presentation_lut,
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
            contributing_equipment=[
                algorithm_equipment(
                    algorithm,
                    when,
                    f"AI finding regions ({summary}) by {algorithm.title} "
                    f"(model sha256 {algorithm.sha256}). {radlight.NOT_FOR_PRIMARY_DIAGNOSIS}",
                )
            ],
            series_description=ANNOTATION_SERIES_DESCRIPTION,
        )
    _add_outline_overlay(
        state, outline_mask([f.region for f in findings if f.region], rows, columns)
    )
    # Grey displays (dcmtk among them) read this rather than the CIELab colour: draw in white.
    state.GraphicLayerSequence[0].GraphicLayerRecommendedDisplayGrayscaleValue = 0xFFFF
    state.BodyPartExamined = _body_part(view)
    laterality = view.get("Laterality")
    if laterality in ("R", "L"):
        state.Laterality = laterality
    state.PresentationCreationDate = DA(when.date())
    state.PresentationCreationTime = TM(when.time())
    stamp(state, when)
    return state
