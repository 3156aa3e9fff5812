"""Inputs shared by the result builders: provenance, finding scores, and views of source headers.

Values are checked when the objects are made (construct valid or raise), so a builder never writes a
DICOM object from an out-of-range score or a malformed algorithm identity.
"""

import copy
import datetime
import logging
import math
import numbers
import re
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, DT, TM

import radlight
from models.labels import FindingCode, finding_code
from radlight.uids import is_valid_uid

logger = logging.getLogger(__name__)

_LO_MAX = 64
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_AGE_STRING = re.compile(r"^[0-9]{3}[DWMY]$")
_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")

# Patient/study attributes that are type 2 in the IODs we write: highdicom's SR base reads them as
# attributes, so a source that lacks them gets them empty rather than failing the build.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_PATIENT_SEX = frozenset({"M", "F", "O"})
_HIGHDICOM_MODEL_NAME = "highdicom"
# The words every burned-in result shows (Secondary Capture legends, presentation-state labels).
AI_RESULT_WARNING = "AI result - not for primary diagnosis"
# pydicom's wording when highdicom flags a single-component person name; such names are valid DICOM
# and must be copied unchanged so the result files under the same patient in the PACS.
_SINGLE_COMPONENT_NAME_WARNING = r".*unlikely to represent the intended person name.*"


def check_text(value: object, what: str, max_length: int = _LO_MAX) -> str:
    """A non-empty DICOM text value of at most ``max_length`` characters (64 for LO, 16 for SH),
    with no backslash or control characters."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{what} must be at most {max_length} characters")
    if "\\" in value or any(ord(ch) < 0x20 for ch in value):
        raise ValueError(f"{what} must not contain a backslash or control characters")
    return value


@dataclass(frozen=True)
class AlgorithmInfo:
    """Who made a result (IHE AI Results provenance): algorithm name, version and model checksum."""

    name: str
    version: str
    sha256: str
    manufacturer: str = "RadLight"
    software_version: str = radlight.__version__

    def __post_init__(self) -> None:
        check_text(self.name, "AlgorithmInfo.name")
        check_text(self.version, "AlgorithmInfo.version")
        check_text(self.manufacturer, "AlgorithmInfo.manufacturer")
        check_text(self.software_version, "AlgorithmInfo.software_version")
        if not isinstance(self.sha256, str):
            raise TypeError("AlgorithmInfo.sha256 must be a str")
        normalised = self.sha256.lower()
        if _SHA256.match(normalised) is None:
            raise ValueError("AlgorithmInfo.sha256 must be 64 hexadecimal characters")
        object.__setattr__(self, "sha256", normalised)

    @property
    def sha256_prefix(self) -> str:
        """The first 12 hex digits: enough to tell model files apart in human-readable text."""
        return self.sha256[:12]

    @property
    def title(self) -> str:
        """``name version``, as people read it on the overlay and in descriptions."""
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class FindingScore:
    """One finding's probability for one image, with the code the SR uses for it."""

    label: str
    code: FindingCode
    probability: float

    def __post_init__(self) -> None:
        check_text(self.label, "FindingScore.label")
        if not isinstance(self.code, FindingCode):
            raise TypeError("FindingScore.code must be a FindingCode")
        if isinstance(self.probability, bool) or not isinstance(self.probability, numbers.Real):
            raise TypeError("FindingScore.probability must be a real number")
        value = float(self.probability)  # numpy scalars become plain floats, as highdicom wants
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"FindingScore.probability must be in [0, 1], got {value!r}")
        object.__setattr__(self, "probability", value)

    @classmethod
    def for_label(cls, label: str, probability: float) -> "FindingScore":
        """A score for a classifier label, coded with ``models.labels.finding_code``."""
        return cls(label=label, code=finding_code(label), probability=probability)

    @property
    def display_label(self) -> str:
        """The label as people read it (``Pleural_Thickening`` becomes ``Pleural Thickening``)."""
        return self.label.replace("_", " ")


def resolve_content_datetime(value: datetime.datetime | None) -> datetime.datetime:
    """The time a result is stamped with: the caller's (reproducible) or now."""
    if value is None:
        return datetime.datetime.now()
    if not isinstance(value, datetime.datetime):
        raise TypeError("content_datetime must be a datetime.datetime")
    return value


def check_uid(value: object, what: str) -> str:
    """A syntactically valid DICOM UID, or ValueError."""
    if not isinstance(value, str) or not is_valid_uid(value):
        raise ValueError(f"{what} is not a valid DICOM UID: {value!r}")
    return value


def check_positive_int(value: object, what: str) -> int:
    """A positive int (not a bool), as DICOM IS numbers for series and instances."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int")
    if not 1 <= value <= 2**31 - 1:
        raise ValueError(f"{what} must be a positive integer that fits DICOM IS")
    return value


def check_source_image(source: object, what: str = "source") -> pydicom.Dataset:
    """A dataset that identifies an image: SOP class and instance, study and series, rows and columns."""
    if not isinstance(source, pydicom.Dataset):
        raise TypeError(f"{what} must be a pydicom Dataset")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        check_uid(source.get(keyword), f"{what}.{keyword}")
    for keyword in ("Rows", "Columns"):
        value = source.get(keyword)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} has no usable {keyword}")
    return source


def source_modality(source: pydicom.Dataset) -> str | None:
    """The source's Modality when it is a well-formed CS value, else None."""
    value = source.get("Modality")
    if isinstance(value, str) and _MODALITY.match(value) is not None:
        return value
    return None


def header_view(source: pydicom.Dataset) -> pydicom.Dataset:
    """A pixel-free copy of ``source``'s public header that highdicom can copy from without failing.

    Missing type-2 patient/study attributes are added empty; values highdicom would reject or copy as
    non-conformant are emptied (type 2) or dropped (type 3, e.g. PatientAge ``58`` without a unit:
    guessing years would be inventing data).
    """
    view = pydicom.Dataset()
    for element in source:
        tag = element.tag
        if tag.is_private or tag.group == 0x7FE0 or 0x6000 <= tag.group <= 0x60FF:
            continue
        view.add(copy.deepcopy(element))
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in view:
            setattr(view, keyword, None)
    age = view.get("PatientAge")
    if age is not None and (not isinstance(age, str) or _AGE_STRING.match(age) is None):
        del view.PatientAge
        logger.debug("dropped a non-conformant PatientAge from the source header")
    sex = view.get("PatientSex")
    if sex and sex not in _PATIENT_SEX:
        view.PatientSex = None
    for keyword, vr_class in (("PatientBirthDate", DA), ("StudyDate", DA), ("StudyTime", TM)):
        value = view.get(keyword)
        if value:
            try:
                vr_class(value)
            except ValueError:
                setattr(view, keyword, None)
    return view


@contextmanager
def tolerate_single_component_names() -> Iterator[None]:
    """Silence highdicom's warning about caret-less patient names, which DICOM allows."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=_SINGLE_COMPONENT_NAME_WARNING, category=UserWarning
        )
        yield


def stamp(instance: pydicom.Dataset, when: datetime.datetime) -> None:
    """Replace the clock readings highdicom takes on its own with ``when``, for reproducible bytes."""
    instance.InstanceCreationDate = DA(when.date())
    instance.InstanceCreationTime = TM(when.time())
    for item in instance.get("ContributingEquipmentSequence", []):
        if item.get("ManufacturerModelName") == _HIGHDICOM_MODEL_NAME:
            item.ContributionDateTime = DT(when)


def algorithm_equipment(
    algorithm: AlgorithmInfo, when: datetime.datetime, description: str
) -> hd.ContributingEquipment:
    """The Contributing Equipment item that names the algorithm (IHE AI Results)."""
    return hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algorithm.name,
        software_versions=[algorithm.version, f"RadLight {algorithm.software_version}"],
        contribution_datetime=when,
        contribution_description=description,
    )


def ascii_text(value: str, what: str, max_chars: int = 1024) -> str:
    """``value`` as single-spaced ASCII (accents dropped, dashes kept), at most ``max_chars``:
    text any receiver's character set can carry. ValueError when nothing is left."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str")
    dashed = value.replace("\u2013", "-").replace("\u2014", "-")
    text = unicodedata.normalize("NFKD", dashed).encode("ascii", "ignore").decode("ascii")
    text = " ".join(text.split())
    if not text:
        raise ValueError(f"{what} is empty")
    return text[:max_chars]
