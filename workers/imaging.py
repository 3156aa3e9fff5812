"""From a stored DICOM instance to a windowed 8-bit frontal chest image, or a reason why not.

Decoding covers every transfer syntax pydicom can decode with the pylibjpeg and gdcm plugins.
The patient's age, for models restricted to an age range, is read as the node reads it for routing
(``dicom_node.patient_age``), so a route and the model's input contract never disagree. Decoding
and windowing live in ``dicom_node.pixels``, shared with the API's grounding call and viewer.
"""

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from dicom_node.patient_age import patient_age
from dicom_node.pixels import to_display_uint8
from radlight.errors import NotAnalysableError

CHEST_MODALITIES = frozenset({"CR", "DX"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "PORT CHEST"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
MIN_SIDE = 64
MAX_SIDE = 8192


def check_age_range(
    ds: Dataset, age_range_years: tuple[int, int] | None, population: str | None = None
) -> None:
    """Raise NotAnalysableError unless the patient's age is within the model's range (both ends
    included, completed years); with a range, an unknown age is not analysed either."""
    if age_range_years is None:
        return
    low, high = age_range_years
    what = f"this model's range {low}\u2013{high} y" + (f" ({population})" if population else "")
    age = patient_age(ds)
    if age is None:
        raise NotAnalysableError(
            f"patient age is unknown (no valid PatientAge, or PatientBirthDate and StudyDate); "
            f"{what} requires it"
        )
    if not low <= age.years <= high:
        raise NotAnalysableError(f"patient age {age.text} is outside {what}")


def check_frontal_chest(ds: Dataset) -> None:
    """Raise NotAnalysableError unless ``ds`` looks like a frontal chest radiograph.

    Absent attributes are tolerated (many archives leave ViewPosition and BodyPartExamined empty);
    present ones that say otherwise are respected.
    """
    if "PixelData" not in ds:
        raise NotAnalysableError("the instance has no pixel data")
    modality = str(ds.get("Modality", "") or "").upper()
    if modality not in CHEST_MODALITIES:
        raise NotAnalysableError(f"modality {modality or 'missing'} is not CR or DX")
    body_part = str(ds.get("BodyPartExamined", "") or "").upper()
    if body_part and body_part not in CHEST_BODY_PARTS:
        raise NotAnalysableError(f"body part {body_part} is not the chest")
    view = str(ds.get("ViewPosition", "") or "").upper()
    if view in LATERAL_VIEWS:
        raise NotAnalysableError(f"view position {view} is lateral; the model reads frontal views")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise NotAnalysableError("colour images are not radiographs the model reads")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise NotAnalysableError("multi-frame images are not supported")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if not (MIN_SIDE <= rows <= MAX_SIDE and MIN_SIDE <= cols <= MAX_SIDE):
        raise NotAnalysableError(f"image size {rows}x{cols} is outside {MIN_SIDE}..{MAX_SIDE}")


def load_frontal_chest(ds: Dataset) -> NDArray[np.uint8]:
    """The windowed display image of a frontal chest radiograph, read-only: every result of the
    image is made from it, and its reduced copy for the overlays is made once and shared."""
    check_frontal_chest(ds)
    display = to_display_uint8(ds)
    display.flags.writeable = False
    return display


def check_input_contract(
    ds: Dataset, modalities: tuple[str, ...], view_positions: tuple[str, ...]
) -> None:
    """Raise NotAnalysableError when a present Modality or ViewPosition is not one the model's
    card lists; absent values are tolerated, as in :func:`check_frontal_chest`."""
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in {m.upper() for m in modalities}:
        raise NotAnalysableError(
            f"modality {modality} is not one this model reads ({', '.join(modalities)})"
        )
    view = str(ds.get("ViewPosition", "") or "").upper()
    if view and view not in {v.upper() for v in view_positions}:
        raise NotAnalysableError(
            f"view position {view} is not one this model reads ({', '.join(view_positions)})"
        )
