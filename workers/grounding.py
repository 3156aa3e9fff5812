"""A radiologist's report grounded on a job's image: one SC per grounded sentence and the SR.

The pipeline calls :func:`ground_report` when a job's input set holds a report SR, or when the
job was made for a report posted through the API. The model is the job's (the route's) classifier;
the grounder is ``models.grounding``'s. :func:`build_grounded_results` is pure (no model, no I/O):
UIDs derive from the job's inputs, the model and the report text, so a re-run replaces rather than
duplicates, and objects carry the job's content time, so a re-run is byte-identical.
"""

import hashlib
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage

from db.models import ResultKind, SCEncoding
from models.grounding import GroundedPhrase, grounder_for
from models.grounding.phrases import split_sentences
from models.registry import ModelEntry
from workers.analysis import (
    AnalysedImage,
    BuiltResult,
    JobIdentity,
    _job_step,
    _Uids,
    algorithm_of,
)
from workers.results import AlgorithmInfo
from workers.results.grounded_sr import build_grounded_report, report_sentences
from workers.results.links import ReportReference, link_job_objects
from workers.results.sc import build_sentence_overlay

GROUNDED_SC_SERIES_NUMBER = 9909
GROUNDED_SR_SERIES_NUMBER = 9910


def ground_report(
    job: JobIdentity,
    entry: ModelEntry,
    image: AnalysedImage,
    text: str,
    report: Dataset | None,
    overlay_max_side: int | None = None,
) -> list[BuiltResult]:
    """Ground every sentence of ``text`` on ``image`` with ``entry``'s classifier and build the
    results; ``report`` is the SR the text came from (None for posted text), ``overlay_max_side``
    caps the SCs' size as for the findings' (``ResultOptions``)."""
    unit = image.display.astype(np.float32) / np.float32(255)
    phrases = grounder_for(entry).ground(unit, text)
    return build_grounded_results(
        job, algorithm_of(entry), image, text, phrases, report, overlay_max_side
    )


def build_grounded_results(
    job: JobIdentity,
    algorithm: AlgorithmInfo,
    image: AnalysedImage,
    text: str,
    phrases: Sequence[GroundedPhrase],
    report: Dataset | None,
    overlay_max_side: int | None = None,
) -> list[BuiltResult]:
    """An SC per sentence with a region (its phrases' heatmaps, the highest per pixel) and the
    grounded-report SR listing every sentence; linked as one job's objects."""
    uid = _Uids(job, algorithm)
    key = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
    source_uid = str(image.source.SOPInstanceUID)
    sentences = report_sentences(text, split_sentences(text), phrases)
    results: list[BuiltResult] = []
    for number, sentence in enumerate((s for s in sentences if s.regions), start=1):
        heatmap = np.maximum.reduce([np.asarray(p.heatmap) for p in sentence.regions])
        overlay = build_sentence_overlay(
            source=image.source,
            display_image=image.display,
            heatmap=heatmap,
            sentence=sentence.text,
            sentence_number=sentence.index + 1,
            algorithm=algorithm,
            series_instance_uid=uid("grounded-sc-series", key),
            sop_instance_uid=uid("grounded-sc", key, source_uid, str(sentence.index)),
            series_number=GROUNDED_SC_SERIES_NUMBER,
            instance_number=number,
            content_datetime=job.created_at,
            max_side=overlay_max_side,
        )
        findings = sorted({f for p in sentence.regions for f in p.phrase.findings})
        results.append(
            BuiltResult(
                ResultKind.GROUNDED_SC,
                overlay,
                source_uid,
                {"sentence": sentence.index + 1, "findings": findings},
                SCEncoding.LOSSLESS,
            )
        )
    sr_uid = uid("grounded-sr", key, source_uid)
    document = build_grounded_report(
        source=image.source,
        sentences=sentences,
        algorithm=algorithm,
        series_instance_uid=uid("grounded-sr-series", key),
        sop_instance_uid=sr_uid,
        series_number=GROUNDED_SR_SERIES_NUMBER,
        instance_number=1,
        report=report,
        evidence=[r.dataset for r in results],
        content_datetime=job.created_at,
    )
    summary: dict[str, object] = {
        "sentences": len(sentences),
        "grounded_sentences": len(results),
        "report_sop_instance_uid": str(report.SOPInstanceUID) if report is not None else None,
        "negated": sorted({f for p in phrases if p.phrase.negated for f in p.phrase.findings}),
    }
    results.append(BuiltResult(ResultKind.GROUNDED_SR, document, None, summary))
    link_job_objects(
        [r.dataset for r in results],
        _job_step(job, algorithm, uid),
        ReportReference(ComprehensiveSRStorage, sr_uid),
    )
    return results
