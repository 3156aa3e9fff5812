"""Radiology reports that arrive as structured reports: which instances are reports, and their text.

A RIS or reporting system sends the radiologist's report as a Basic Text SR, an Enhanced SR or a
Comprehensive SR in the study. Its narrative is the TEXT content items of the content tree, in
document order (section headings are CONTAINER concept names and carry no sentences). RadLight's
own results are SRs too; they are recognised by their Manufacturer and never read as a report.
"""

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import BasicTextSRStorage, ComprehensiveSRStorage, EnhancedSRStorage

REPORT_SOP_CLASSES = frozenset({BasicTextSRStorage, EnhancedSRStorage, ComprehensiveSRStorage})
OWN_MANUFACTURER = "RadLight"
MAX_REPORT_CHARS = 20_000


def is_report(sop_class_uid: str) -> bool:
    """True for the SR classes a radiology report arrives in."""
    return sop_class_uid in REPORT_SOP_CLASSES


def _texts(items: Sequence) -> list[str]:
    found: list[str] = []
    for item in items:
        if str(item.get("ValueType", "")).upper() == "TEXT":
            value = str(item.get("TextValue", "") or "").strip()
            if value:
                found.append(value)
        children = item.get("ContentSequence")
        if children:
            found.extend(_texts(children))
    return found


def report_text(ds: Dataset) -> str | None:
    """The report's narrative, paragraphs joined by blank lines; None when ``ds`` is not a
    report someone wrote (another SOP class, RadLight's own SR, or no text at all)."""
    if not is_report(str(ds.get("SOPClassUID", ""))):
        return None
    if str(ds.get("Manufacturer", "") or "").startswith(OWN_MANUFACTURER):
        return None
    parts = _texts(ds.get("ContentSequence") or Sequence())
    text = "\n\n".join(parts).strip()
    return text[:MAX_REPORT_CHARS] or None
