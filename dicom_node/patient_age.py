"""The patient's age in completed years, read from a header without logging it.

From PatientAge (AS: ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``), or else from PatientBirthDate and
the StudyDate (then SeriesDate, AcquisitionDate). A bare number such as ``"58"`` is not valid AS,
but real archives hold it (the NIH-derived test files do) and it can only mean years. Ages count in
completed years (18 months is 1 y). Age is patient-level data: it is recorded for routing and never
written to a log line, so the elements are read raw, past pydicom's value conversion (whose
validation can warn with the value itself).
"""

import re
from dataclasses import dataclass
from datetime import date

from pydicom.dataset import Dataset

MAX_AGE_YEARS = 150
_AGE_STRING = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNITS = {"D": ("days", 1 / 365.25), "W": ("weeks", 7 / 365.25), "M": ("months", 1 / 12)}


@dataclass(frozen=True)
class PatientAge:
    """A patient's age in completed years, and how it was stated (``"58 y"``, ``"18 months"``)."""

    years: int
    text: str


def patient_age(ds: Dataset) -> PatientAge | None:
    """The patient's age from PatientAge, or PatientBirthDate and the study date; None if unknown."""
    stated = _raw_text(ds, "PatientAge")
    match = _AGE_STRING.match(stated)
    if match:
        number, unit = int(match.group(1)), match.group(2).upper()
        if unit in _AGE_UNITS:
            name, per_year = _AGE_UNITS[unit]
            return PatientAge(int(number * per_year + 1e-9), f"{number} {name}")
        if number <= MAX_AGE_YEARS:
            return PatientAge(number, f"{number} y")
    birth = _dicom_date(_raw_text(ds, "PatientBirthDate"))
    seen = next(
        (
            d
            for d in (
                _dicom_date(_raw_text(ds, k))
                for k in ("StudyDate", "SeriesDate", "AcquisitionDate")
            )
            if d is not None
        ),
        None,
    )
    if birth is None or seen is None or seen < birth:
        return None
    years = seen.year - birth.year - ((seen.month, seen.day) < (birth.month, birth.day))
    return PatientAge(years, f"{years} y") if years <= MAX_AGE_YEARS else None


def _raw_text(ds: Dataset, keyword: str) -> str:
    """The element's text as stored, without pydicom's value conversion (and its validation,
    which can put an invalid value, a birth date say, into a warning)."""
    element = ds.get_item(keyword)
    if element is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip(" \0")
    return str(value or "")


def _dicom_date(text: str) -> date | None:
    text = text.strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
