"""The findings report's fast content against its oracle: the same report made by highdicom's
templates item by item (``sr.build_findings_report_with_templates``).

Each case builds a report both ways with the same ``content_datetime`` and asserts the two encode
to the same bytes (``workers.results.encoding.encode``, what the pipeline writes) and are the same
dataset: no finding present, one, several, all 14, with regions or none, several images,
evidence, an amended predecessor, edge scores and thresholds, a long algorithm name. Then the
copies: no dataset of a report is shared with another report or with the prototypes.
"""

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from models.labels import CHEST_XRAY14_LABELS
from radlight.uids import deterministic_uid
from tests.workers.test_sr import ALGORITHM, WHEN, header_copy, stand_in
from workers.results import sr
from workers.results.common import AlgorithmInfo, FindingScore
from workers.results.dataset_copy import copy_tree
from workers.results.encoding import encode
from workers.results.regions import FindingResult, HeatmapRegion, ImageFindings

LONG_ALGORITHM = AlgorithmInfo(
    name="A" * 60 + "-net",
    version="2026.12.05-rc.1+build.0042-with-a-long-version-string-of-64-chars"[:64],
    sha256=hashlib.sha256(b"radlight long model").hexdigest(),
    manufacturer="RadLight Research Laboratories of Somewhere Rather Far Away",
)

Build = Callable[..., hd.sr.ComprehensiveSR]


@pytest.fixture(scope="module")
def sources(real_dicom_files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in real_dicom_files]


def region_on(source: pydicom.Dataset, index: int) -> HeatmapRegion:
    rows, columns = int(source.Rows), int(source.Columns)
    x0, y0 = columns * (0.05 + 0.05 * index) + 0.25, rows * 0.1 + index
    return HeatmapRegion(x0, y0, x0 + columns / 5, y0 + rows / 3.7, x0 + 1.5, y0 + 2.5)


def findings_of(
    source: pydicom.Dataset,
    scores: list[float],
    thresholds: list[float] | float = 0.5,
    regions: bool = True,
) -> ImageFindings:
    """One finding per score (the first ``len(scores)`` labels); present ones get a region when
    ``regions`` is set."""
    per_finding = thresholds if isinstance(thresholds, list) else [thresholds] * len(scores)
    findings = []
    for index, (label, score, threshold) in enumerate(
        zip(CHEST_XRAY14_LABELS, scores, per_finding, strict=False)
    ):
        present = score >= threshold
        region = region_on(source, index) if present and regions else None
        findings.append(
            FindingResult(
                score=FindingScore.for_label(label, score), threshold=threshold, region=region
            )
        )
    shape = (int(source.Rows), int(source.Columns))
    return ImageFindings(source=source, display=np.zeros(shape, dtype=np.uint8), findings=findings)


def build_both(**arguments: Any) -> tuple[hd.sr.ComprehensiveSR, hd.sr.ComprehensiveSR]:
    """The report made fast and made by the templates, from the same arguments."""
    everything: dict[str, Any] = {
        "algorithm": ALGORITHM,
        "series_instance_uid": deterministic_uid("test-sr-fast", "series"),
        "sop_instance_uid": deterministic_uid("test-sr-fast", "report"),
        "series_number": 9902,
        "instance_number": 1,
        "content_datetime": WHEN,
        **arguments,
    }
    return sr.build_findings_report(**everything), sr.build_findings_report_with_templates(
        **everything
    )


def assert_same_report(fast: hd.sr.ComprehensiveSR, oracle: hd.sr.ComprehensiveSR) -> None:
    assert encode(fast) == encode(oracle)
    assert fast == oracle  # element for element
    assert fast.file_meta == oracle.file_meta


FOURTEEN = [round((index + 1) / 15, 4) for index in range(14)]
CASES: dict[str, dict[str, Any]] = {
    "none present": {"scores": FOURTEEN, "thresholds": 0.99},
    "one present": {"scores": FOURTEEN, "thresholds": 0.95},
    "several present": {"scores": FOURTEEN},
    "several present, no regions": {"scores": FOURTEEN, "regions": False},
    "all 14 present": {"scores": FOURTEEN, "thresholds": 0.0},
    "all 14 present, no regions": {"scores": FOURTEEN, "thresholds": 0.0, "regions": False},
    "one finding": {"scores": [0.75]},
    "edge scores": {
        "scores": [0.0, 1.0, 1e-7, 0.1234567890123, 0.5, 0.49999999999, 1 - 1e-12, 2.5e-5],
        "thresholds": [0.0, 1.0, 1e-7, 0.1234567890123, 0.5, 0.5, 1.0, 3e-5],
    },
    "odd thresholds": {"scores": FOURTEEN, "thresholds": [i / 13.5 + 1e-9 for i in range(14)]},
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_one_image_is_the_report_the_templates_make(
    sources: list[pydicom.Dataset], case: str
) -> None:
    images = [findings_of(sources[0], **CASES[case])]
    fast, oracle = build_both(images=images)
    assert_same_report(fast, oracle)


def test_several_images_with_evidence_and_a_predecessor(sources: list[pydicom.Dataset]) -> None:
    first, other = sources
    second = header_copy(first, SOPInstanceUID=deterministic_uid("test-sr-fast", "second"))
    third = header_copy(first, SOPInstanceUID=deterministic_uid("test-sr-fast", "third"))
    images = [
        findings_of(first, FOURTEEN),
        findings_of(second, FOURTEEN, thresholds=0.0),
        findings_of(third, FOURTEEN, thresholds=0.99),
    ]
    evidence = [stand_in(source, kind) for source in (first, second) for kind in ("sc", "gsps")]
    predecessor = sr.build_findings_report_with_templates(
        images=images[:1],
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test-sr-fast", "series", "v1"),
        sop_instance_uid=deterministic_uid("test-sr-fast", "v1"),
        series_number=9902,
        instance_number=1,
        content_datetime=WHEN,
    )
    fast, oracle = build_both(images=images, evidence=evidence, version=2, amends=predecessor)
    assert_same_report(fast, oracle)
    assert "PredecessorDocumentsSequence" in fast
    rois = hd.sr.MeasurementReport.from_sequence([fast]).get_planar_roi_measurement_groups()
    assert len(rois) == 7 + 14  # the regions of the first two images
    # the other real image, of another study, in a report of its own
    fast, oracle = build_both(images=[findings_of(other, FOURTEEN[::-1])])
    assert_same_report(fast, oracle)


def test_another_algorithm_with_long_names(sources: list[pydicom.Dataset]) -> None:
    images = [findings_of(sources[0], FOURTEEN)]
    assert_same_report(*build_both(images=images, algorithm=LONG_ALGORITHM))
    # and the first algorithm's prototypes are still its own
    assert_same_report(*build_both(images=images))


def datasets_of(dataset: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    """Every item below ``dataset``, by a walk of its sequences."""
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield item
                yield from datasets_of(item)


def test_reports_share_no_dataset_and_a_change_to_one_stays_in_it(
    sources: list[pydicom.Dataset],
) -> None:
    images = [findings_of(sources[0], FOURTEEN)]
    first, oracle = build_both(images=images)
    second, _ = build_both(images=images)
    first_items = {id(item) for item in datasets_of(first)}
    first_elements = {id(element) for item in datasets_of(first) for element in item}
    assert not first_items & {id(item) for item in datasets_of(second)}
    assert not first_elements & {id(element) for item in datasets_of(second) for element in item}
    for item in datasets_of(first):  # change every code of the first report
        if "CodeMeaning" in item:
            item.CodeMeaning = "changed"
    third, _ = build_both(images=images)
    assert_same_report(second, oracle)
    assert_same_report(third, oracle)


def test_a_copy_is_equal_and_shares_nothing_changeable(sources: list[pydicom.Dataset]) -> None:
    original = sr.build_findings_report_with_templates(
        images=[findings_of(sources[0], FOURTEEN)],
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("test-sr-fast", "series"),
        sop_instance_uid=deterministic_uid("test-sr-fast", "copied"),
        series_number=9902,
        instance_number=1,
        content_datetime=WHEN,
    ).ContentSequence[-1]
    original.add_new("ReferencedFrameNumber", "IS", [1, 2])  # a multi-valued value is copied too
    copied = copy_tree(original)
    assert copied == original
    assert copied.original_encoding == original.original_encoding
    pairs = list(zip(datasets_of(copied), datasets_of(original), strict=True))
    assert pairs
    assert all(mine is not theirs for mine, theirs in pairs)
    assert all(type(mine) is pydicom.Dataset for mine, _ in pairs)
    assert copied["ReferencedFrameNumber"].value is not original["ReferencedFrameNumber"].value
    for mine, theirs in pairs:
        assert all(a is not b for a, b in zip(mine, theirs, strict=True))


def test_frozen_algorithm_identity_keys_the_prototypes() -> None:
    """Two equal AlgorithmInfo share prototypes; another version does not."""
    same = dataclasses.replace(ALGORITHM)
    assert sr._prototypes(same) is sr._prototypes(ALGORITHM)
    assert sr._prototypes(dataclasses.replace(ALGORITHM, version="9.9")) is not sr._prototypes(
        ALGORITHM
    )


def test_prepared_items_make_the_same_report(sources: list[pydicom.Dataset]) -> None:
    """A worker's warm-up makes every finding's items before the first report
    (``prepare_findings_reports``): all 14 scores and both evaluations of each are made, and the
    report is still the one the templates make."""
    sr._prototypes.cache_clear()
    codes = [FindingScore.for_label(label, 0.0).code for label in CHEST_XRAY14_LABELS]
    sr.prepare_findings_reports(ALGORITHM, codes)
    prepared = sr._prototypes(ALGORITHM)
    assert set(prepared._scores) == set(codes)
    assert set(prepared._presences) == {(code, present) for code in codes for present in (1, 0)}
    made = {id(item) for item in [*prepared._scores.values(), *prepared._presences.values()]}
    fast, oracle = build_both(images=[findings_of(sources[0], FOURTEEN)])
    assert_same_report(fast, oracle)
    # Built from the prepared items, none made anew.
    assert {id(item) for item in [*prepared._scores.values(), *prepared._presences.values()]} == (
        made
    )
