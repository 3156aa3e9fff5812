"""The grounded report: the radiologist's report back as a TID 1500 SR, each sentence with its region.

A Comprehensive SR built through highdicom's templates, with the same frame as the findings report
(``workers.results.sr``: device observer = the algorithm, TID 4019 algorithm identification,
"not for primary diagnosis", local codes declared):

    TID 1500 Imaging Measurement Report
      Image Library: the source image
      Imaging Measurements
        per sentence with a region, one TID 1410 Planar ROI group per grounded phrase
          tracking identifier "Sentence n region k" and a UID from the report's UID
          finding type = the phrase's (first) finding; TID 4019 Algorithm Identification
          Image Region: SCOORD POLYLINE, the region's closed outline on the source image
          TID 300 Measurement: the finding's code = the model's score {probability}
          "Report sentence" = "Grounded" > HAS PROPERTIES TEXT "Comment" = the sentence
          per finding: the finding's code = SCT Present (Absent when negated)
                       > HAS PROPERTIES TEXT "Comment" = the phrase, and if the report hedges it,
                         "(uncertain)"
          "Intended use" = "NOT FOR PRIMARY DIAGNOSIS"
        per sentence without a region, one TID 1501 group on the source image
          "Report sentence" = "Not grounded" with the sentence, its findings Present/Absent, and
          "Intended use"

Every sentence of the report appears once, in order, so the SR can be read as the report. The
report SR the text came from (when it came as DICOM) and the job's grounded SCs are listed as
evidence. Text is written in ASCII (accents dropped), as the not-analysed report does, so any
receiver's character set can carry it.
"""

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from models.grounding import GroundedPhrase
from models.labels import LOCAL, FindingCode, finding_code
from radlight.uids import deterministic_uid
from workers.results.common import (
    AlgorithmInfo,
    ascii_text,
    check_source_image,
    header_view,
    resolve_content_datetime,
)
from workers.results.sr import (
    ABSENT,
    COMMENT,
    PRESENT,
    PROBABILITY_UNIT,
    _algorithm_identification,
    _check_document_ids,
    _check_evidence,
    _concept,
    _device_context,
    _document,
    _intended_use,
    _library_view,
    _render_separately,
    _with_children,
)

GROUNDED_SERIES_DESCRIPTION = "RadLight AI grounded report - not for primary diagnosis"
REPORT_SENTENCE = FindingCode("REPORT_SENTENCE", LOCAL, "Report sentence")
GROUNDED = FindingCode("GROUNDED", LOCAL, "Grounded")
NOT_GROUNDED = FindingCode("NOT_GROUNDED", LOCAL, "Not grounded")
_TEXT_MAX = 1024  # DICOM UT allows more; a sentence longer than this is cut


@dataclass(frozen=True)
class ReportSentence:
    """One sentence of the report and the grounded phrases in it (possibly none)."""

    index: int
    text: str
    phrases: tuple[GroundedPhrase, ...]

    @property
    def regions(self) -> tuple[GroundedPhrase, ...]:
        """The phrases that have a region to show: not negated, with an outline and a heatmap."""
        return tuple(
            p
            for p in self.phrases
            if not p.phrase.negated and p.polygon and len(p.polygon) >= 3 and p.heatmap is not None
        )


def report_sentences(
    text: str, spans: Sequence[tuple[int, int]], phrases: Sequence[GroundedPhrase]
) -> list[ReportSentence]:
    """The report's sentences (``spans`` are their character offsets) with their phrases."""
    sentences = []
    for index, (start, end) in enumerate(spans):
        sentence = text[start:end].strip()
        if not sentence:
            continue
        mine = tuple(p for p in phrases if p.phrase.sentence_index == index)
        sentences.append(ReportSentence(index=index, text=sentence, phrases=mine))
    return sentences


def _comment(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=_concept(COMMENT),
        value=ascii_text(text, "a report sentence", _TEXT_MAX),
        relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
    )


def _sentence_evaluation(sentence: ReportSentence, grounded: bool) -> hd.sr.QualitativeEvaluation:
    evaluation = hd.sr.QualitativeEvaluation(
        name=_concept(REPORT_SENTENCE), value=_concept(GROUNDED if grounded else NOT_GROUNDED)
    )
    return _with_children(evaluation, [_comment(sentence.text)])


def _finding_evaluations(phrases: Sequence[GroundedPhrase]) -> list[hd.sr.QualitativeEvaluation]:
    """Each finding the phrases name: Present, or Absent when the report negates it."""
    evaluations = []
    for grounded in phrases:
        phrase = grounded.phrase
        words = phrase.text + (" (uncertain)" if phrase.uncertain else "")
        for finding in phrase.findings:
            evaluation = hd.sr.QualitativeEvaluation(
                name=_concept(finding_code(finding)),
                value=_concept(ABSENT if phrase.negated else PRESENT),
            )
            evaluations.append(_with_children(evaluation, [_comment(words)]))
    return evaluations


def _closed_outline(polygon: Sequence[tuple[float, float]], columns: int, rows: int) -> np.ndarray:
    """The outline as SCOORD POLYLINE data: points clipped to the image, first point repeated."""
    points = np.asarray(polygon, dtype=np.float32).reshape(-1, 2)
    points[:, 0] = np.clip(points[:, 0], 0, columns)
    points[:, 1] = np.clip(points[:, 1], 0, rows)
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points


def build_grounded_report(
    *,
    source: pydicom.Dataset,
    sentences: Sequence[ReportSentence],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    report: pydicom.Dataset | None = None,
    evidence: Sequence[pydicom.Dataset] = (),
    content_datetime: datetime.datetime | None = None,
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR (TID 1500) with every sentence of the report and its region on
    ``source`` (see the module docstring). ``report`` is the SR the text came from, if any; it
    and ``evidence`` (the grounded SCs) must belong to the source's study. UIDs and times are
    deterministic as in ``sr.build_findings_report``."""
    check_source_image(source)
    if not sentences:
        raise ValueError("the report has no sentences")
    _check_document_ids(
        algorithm, series_instance_uid, sop_instance_uid, series_number, instance_number
    )
    view = header_view(source)
    extra = [report, *evidence] if report is not None else list(evidence)
    checked_evidence = _check_evidence(
        extra, str(view.StudyInstanceUID), {str(view.SOPInstanceUID)}
    )
    when = resolve_content_datetime(content_datetime)
    algorithm_id = _algorithm_identification(algorithm)
    columns, rows = int(view.Columns), int(view.Rows)
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    for sentence in sentences:
        number = sentence.index + 1
        regions = sentence.regions
        for k, grounded in enumerate(regions, start=1):
            phrase = grounded.phrase
            assert grounded.polygon is not None  # regions have outlines
            finding = phrase.findings[0] if phrase.findings else None
            measurements = []
            if finding is not None and grounded.score is not None:
                measurements.append(
                    hd.sr.Measurement(
                        name=_concept(finding_code(finding)),
                        value=float(grounded.score),
                        unit=_concept(PROBABILITY_UNIT),
                        algorithm_id=algorithm_id,
                    )
                )
            groups.append(
                _render_separately(
                    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                        tracking_identifier=hd.sr.TrackingIdentifier(
                            uid=deterministic_uid(
                                sop_instance_uid, "sentence", str(number), str(k)
                            ),
                            identifier=f"Sentence {number} region {k}",
                        ),
                        referenced_region=hd.sr.ImageRegion(
                            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                            graphic_data=_closed_outline(grounded.polygon, columns, rows),
                            source_image=hd.sr.SourceImageForRegion.from_source_image(view),
                        ),
                        finding_type=_concept(finding_code(finding)) if finding else None,
                        algorithm_id=algorithm_id,
                        measurements=measurements or None,
                        qualitative_evaluations=[
                            _sentence_evaluation(sentence, grounded=True),
                            *_finding_evaluations([grounded]),
                            _intended_use(),
                        ],
                    )
                )
            )
        if regions:
            continue
        groups.append(
            _render_separately(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=deterministic_uid(sop_instance_uid, "sentence", str(number)),
                        identifier=f"Sentence {number}",
                    ),
                    algorithm_id=algorithm_id,
                    qualitative_evaluations=[
                        _sentence_evaluation(sentence, grounded=False),
                        *_finding_evaluations(sentence.phrases),
                        _intended_use(),
                    ],
                    source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(view)],
                )
            )
        )
    content = hd.sr.MeasurementReport(
        observation_context=_device_context(algorithm),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        referenced_images=[_library_view(view)],
    )
    return _document(
        report=content,
        evidence=[view, *checked_evidence],
        algorithm=algorithm,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
        series_description=GROUNDED_SERIES_DESCRIPTION,
        equipment_description="AI grounded report",
        when=when,
    )
