"""Which instances are radiology reports, and their text: Basic Text and Enhanced SRs from a RIS,
nested sections, and RadLight's own SRs (never read back as a report)."""

import copy

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import BasicTextSRStorage, ComprehensiveSRStorage, EnhancedSRStorage

from dicom_node.reports import is_report, report_text
from tests.grounding_study import REPORT, phantom_image, report_sr


def _section(title: str, *texts: str) -> Dataset:
    """A CONTAINER item holding TEXT items, as reports with headed sections are sent."""
    section = Dataset()
    section.RelationshipType, section.ValueType = "CONTAINS", "CONTAINER"
    section.ContinuityOfContent = "SEPARATE"
    children = []
    for text in texts:
        item = Dataset()
        item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
        children.append(item)
    section.ContentSequence = Sequence(children)
    return section


def test_report_text_from_basic_text_enhanced_and_nested_reports() -> None:
    image = phantom_image("reports-unit")
    basic = report_sr(image)
    assert is_report(basic.SOPClassUID)
    assert report_text(basic) == REPORT

    enhanced = copy.deepcopy(basic)
    enhanced.SOPClassUID = EnhancedSRStorage
    enhanced.ContentSequence = Sequence(
        [_section("Findings", "Left basal effusion.", "  "), _section("Impression", "Effusion.")]
    )
    assert report_text(enhanced) == "Left basal effusion.\n\nEffusion."


def test_what_is_not_a_report_someone_wrote() -> None:
    image = phantom_image("reports-unit")
    assert not is_report(str(image.SOPClassUID))
    assert report_text(image) is None

    own = report_sr(image)
    own.SOPClassUID, own.Manufacturer = ComprehensiveSRStorage, "RadLight"
    assert report_text(own) is None  # our grounded or findings SR coming back from the PACS

    empty = report_sr(image, text="  ")
    assert empty.SOPClassUID == BasicTextSRStorage
    assert report_text(empty) is None
