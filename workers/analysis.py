"""From analysed images to every result object of one job, with deterministic UIDs.

``analyse`` runs the model once over all images and turns each finding into a FindingResult
(score, operating threshold, region for the present ones, and a full-size heatmap for those that
the results draw). ``build_results`` then calls the result builders: an SC per present finding (up
to a cap) and a summary SC per image, optionally a probability SEG and a region GSPS per image, and
one TID 1500 SR that references all of them; every object names the job's step, and the images
reference the SR (``workers.results.links``). A job whose images were all refused gets a "not
analysed" SR instead (``not_analysed``). Pure apart from inference: no database, no store;
``build_results`` and ``not_analysed`` need no model at all (scripts/render_gallery.py feeds them
synthetic findings).
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from db.models import ResultKind, SCEncoding
from models.batching import infer_batched
from models.cam import ImageCam
from models.preprocess import CropGeometry, prepare_image
from models.registry import ModelEntry
from models.runtime import load_model
from radlight.stages import StageClock
from radlight.uids import deterministic_uid
from workers.results import (
    AlgorithmInfo,
    FindingScore,
    build_findings_report,
    build_heatmap_overlay,
    build_not_analysed_report,
    build_probability_segmentation,
    build_region_annotations,
    build_summary_overlay,
)
from workers.results.links import JobStep, ReportReference, link_job_objects
from workers.results.overlay import reduction_for
from workers.results.regions import FindingResult, ImageFindings, heatmap_region

SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
SEG_SERIES_NUMBER = 9903
GSPS_SERIES_NUMBER = 9904
NOT_ANALYSED_SERIES_NUMBER = 9905
JPEG_SC_SERIES_NUMBER = 9906
SUMMARY_SERIES_NUMBER = 9907
JPEG_SUMMARY_SERIES_NUMBER = 9908


@dataclass(frozen=True)
class AnalysedImage:
    source: Dataset
    display: NDArray[np.uint8]


@dataclass(frozen=True)
class ResultOptions:
    """What to produce for a job, from its route and the route's destinations."""

    max_overlays_per_image: int = 3
    default_threshold: float = 0.5
    segmentation: bool = False
    presentation_state: bool = False
    jpeg_copies: bool = False  # some destination wants lossy JPEG Secondary Captures
    overlay_max_side: int | None = None  # the SCs' longest side; None: the source's size


@dataclass(frozen=True)
class JobIdentity:
    """What a job's result UIDs derive from: same input set and model version, same UIDs."""

    job_id: int  # RadLight's job number, which the objects carry as their procedure step ID
    study_instance_uid: str
    input_hash: str
    created_at: datetime  # the results' content date/time, so a re-run is byte-identical
    version: int = 1  # 1 + the earlier jobs of this study and route that made a findings report
    amends: Dataset | None = None  # the latest of those reports, which this one supersedes


@dataclass(frozen=True)
class BuiltResult:
    kind: ResultKind
    dataset: Dataset
    source_sop_instance_uid: str | None
    summary: dict[str, object]
    sc_encoding: SCEncoding | None = None


class _Uids:
    def __init__(self, job: JobIdentity, algorithm: AlgorithmInfo) -> None:
        self._base = (job.study_instance_uid, job.input_hash, algorithm.name, algorithm.version)

    def __call__(self, *parts: str) -> str:
        return deterministic_uid(*self._base, *parts)


def algorithm_of(entry: ModelEntry) -> AlgorithmInfo:
    """The provenance every result of ``entry`` carries: its card's name and version (with
    ``+fp16`` when its fp16 copy ran: other numbers, so other objects), and the checksum of the
    file that ran."""
    version = entry.card.version
    if entry.precision != "fp32":
        version = f"{version}+{entry.precision}"
    return AlgorithmInfo(name=entry.card.name, version=version, sha256=entry.sha256)


def _job_step(job: JobIdentity, algorithm: AlgorithmInfo, uid: _Uids) -> JobStep:
    """How every object of the job names it: a step UID from the job's inputs and model, the
    job's number, and the model that ran."""
    description = f"RadLight AI job {job.job_id}: {algorithm.title}"
    return JobStep(uid=uid("job-step"), step_id=str(job.job_id), description=description[:64])


def _finding_results(
    entry: ModelEntry,
    image: AnalysedImage,
    probabilities: NDArray[np.float32],
    heatmaps: NDArray[np.float32],
    geometry: CropGeometry,
    options: ResultOptions,
) -> ImageFindings:
    """Each label's score and threshold; a region for every present finding; a heatmap only for
    the findings that ``build_results`` draws (:func:`_drawn`).

    A region is found on the CAM laid over the image without making the whole map
    (``models.cam.ImageCam`` read on a coarse grid and a few bands, the same box as from the full
    map); making a 1024² map for each of 14 present findings was most of this stage's time.
    The drawn heatmaps are made at the size the overlays show the image (``overlay_max_side``),
    not at the source's to be reduced after: the same CAM sampled at the overlay's pixels. A SEG
    needs them at the source's size, so with one they are made full size.
    """
    findings: list[FindingResult] = []
    cams: dict[str, ImageCam] = {}
    for k, spec in enumerate(entry.card.labels):
        score = FindingScore.for_label(spec.name, float(probabilities[k]))
        threshold = spec.threshold if spec.threshold is not None else options.default_threshold
        if score.probability >= threshold:
            cam = ImageCam.of(heatmaps[k], geometry, image.display.shape)
            cams[score.label] = cam
            findings.append(FindingResult(score, threshold, region=heatmap_region(cam)))
        else:
            findings.append(FindingResult(score, threshold))
    scored = ImageFindings(source=image.source, display=image.display, findings=findings)
    drawn = {finding.score.label for finding in _drawn(scored, options)}
    shown = reduction_for(image.display.shape, options.overlay_max_side)
    if shown.reduced and not options.segmentation:
        cams = {
            label: ImageCam.of(heatmaps[k], geometry, shown.shape)
            for k, label in enumerate(spec.name for spec in entry.card.labels)
            if label in drawn
        }
    return ImageFindings(
        source=image.source,
        display=image.display,
        findings=[
            replace(f, heatmap=cams[f.score.label].full()) if f.score.label in drawn else f
            for f in findings
        ],
    )


def _drawn(findings: ImageFindings, options: ResultOptions) -> list[FindingResult]:
    """The findings whose heatmap ``build_results`` reads: the heatmap SCs' (the first
    ``max_overlays_per_image`` present ones by score) or, with a SEG, every present one."""
    present = findings.present()
    return present if options.segmentation else present[: options.max_overlays_per_image]


def run_model(
    entry: ModelEntry,
    images: Sequence[AnalysedImage],
    options: ResultOptions,
    clock: StageClock | None = None,
) -> list[ImageFindings]:
    """Run the model over ``images``: each image's findings, with a region for the present ones
    and a full-size heatmap for those ``options`` draw; ``clock``, if given, receives the time
    spent preprocessing, in the model (with batching, the wait for a run too) and on the CAMs."""
    clock = clock if clock is not None else StageClock()
    card = entry.card
    model = load_model(entry)
    with clock.stage("preprocess"):
        prepared = [prepare_image(image.display, card.preprocessing) for image in images]
        batch = np.stack([p.tensor for p in prepared])
    with clock.stage("inference"):
        # With dynamic batching on, other jobs' images may share this run (models/batching.py).
        output = infer_batched(model).infer(batch)
    with clock.stage("cam"):
        return [
            _finding_results(
                entry,
                image,
                output.probabilities[index],
                output.heatmaps[index],
                prepared[index].geometry,
                options,
            )
            for index, image in enumerate(images)
        ]


def analyse(
    job: JobIdentity,
    entry: ModelEntry,
    images: Sequence[AnalysedImage],
    options: ResultOptions,
    clock: StageClock | None = None,
) -> list[BuiltResult]:
    """Run the model over ``images`` and build every result object of the job; ``clock``, if
    given, receives the time spent preprocessing, in the model, on the CAMs and building."""
    clock = clock if clock is not None else StageClock()
    findings = run_model(entry, images, options, clock)
    with clock.stage("build"):
        return build_results(job, algorithm_of(entry), findings, options)


def build_results(
    job: JobIdentity,
    algorithm: AlgorithmInfo,
    images: Sequence[ImageFindings],
    options: ResultOptions,
) -> list[BuiltResult]:
    """Every result object of a job from its images' findings, linked to each other: SCs, SEG and
    GSPS per image as ``options`` ask, and the SR. Pure: no model, no I/O."""
    return list(iter_results(job, algorithm, images, options))


def result_classes(options: ResultOptions, encoding: SCEncoding) -> list[tuple[str, UID]]:
    """The SOP classes and transfer syntaxes of the objects a job with ``options`` may send to a
    destination that takes ``encoding``'s Secondary Captures: what its association proposes."""
    sc_syntax = JPEGBaseline8Bit if encoding is SCEncoding.JPEG_BASELINE else ExplicitVRLittleEndian
    classes = [
        (SecondaryCaptureImageStorage, sc_syntax),
        (ComprehensiveSRStorage, ExplicitVRLittleEndian),
    ]
    if options.segmentation:
        classes.append((SegmentationStorage, ExplicitVRLittleEndian))
    if options.presentation_state:
        classes.append((GrayscaleSoftcopyPresentationStateStorage, ExplicitVRLittleEndian))
    return [(str(sop_class), UID(syntax)) for sop_class, syntax in classes]


def iter_results(
    job: JobIdentity,
    algorithm: AlgorithmInfo,
    images: Sequence[ImageFindings],
    options: ResultOptions,
) -> Iterator[BuiltResult]:
    """``build_results`` one object at a time, each finished and linked when it is yielded (the
    SR last, since it lists the others), so a worker can store and send each while the next is
    built. Pure: no model, no I/O."""
    image_results: list[BuiltResult] = []
    for result in iter_image_results(job, algorithm, images, options):
        image_results.append(result)
        yield result
    yield build_report_result(job, algorithm, images, image_results)


def _report_reference(uid: _Uids) -> ReportReference:
    """The job's findings report, which its images reference: its UID is known before it is built
    (it derives from the job's inputs), so the images can be finished, stored and sent first."""
    return ReportReference(ComprehensiveSRStorage, uid("sr"))


def build_image_results(
    job: JobIdentity,
    algorithm: AlgorithmInfo,
    images: Sequence[ImageFindings],
    options: ResultOptions,
) -> list[BuiltResult]:
    """The job's images (SCs, SEG and GSPS per image as ``options`` ask), already linked to the
    job's step and its report-to-be. Pure: no model, no I/O."""
    return list(iter_image_results(job, algorithm, images, options))


def iter_image_results(
    job: JobIdentity,
    algorithm: AlgorithmInfo,
    images: Sequence[ImageFindings],
    options: ResultOptions,
) -> Iterator[BuiltResult]:
    """``build_image_results`` one object at a time, each linked before it is yielded."""
    uid = _Uids(job, algorithm)
    when = job.created_at
    step, report = _job_step(job, algorithm, uid), _report_reference(uid)

    def linked(result: BuiltResult) -> BuiltResult:
        link_job_objects([result.dataset], step, report)
        return result

    overlay_counts = dict.fromkeys(SCEncoding, 0)  # instance numbers, per SC series
    for index, findings in enumerate(images):
        source_uid = findings.sop_instance_uid
        encodings = [SCEncoding.LOSSLESS] + (
            [SCEncoding.JPEG_BASELINE] if options.jpeg_copies else []
        )
        for encoding in encodings:
            jpeg = encoding is SCEncoding.JPEG_BASELINE
            syntax = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
            suffix = ("jpeg",) if jpeg else ()
            series = uid("sc-series", *suffix)
            number = JPEG_SC_SERIES_NUMBER if jpeg else SC_SERIES_NUMBER
            for finding in findings.present()[: options.max_overlays_per_image]:
                assert finding.heatmap is not None  # present findings carry their heatmap
                overlay_counts[encoding] += 1
                overlay = build_heatmap_overlay(
                    source=findings.source,
                    display_image=findings.display,
                    heatmap=finding.heatmap,
                    finding=finding.score,
                    algorithm=algorithm,
                    series_instance_uid=series,
                    sop_instance_uid=uid("sc", source_uid, finding.score.label, *suffix),
                    series_number=number,
                    instance_number=overlay_counts[encoding],
                    content_datetime=when,
                    transfer_syntax_uid=syntax,
                    max_side=options.overlay_max_side,
                )
                yield linked(
                    BuiltResult(
                        ResultKind.HEATMAP_SC,
                        overlay,
                        source_uid,
                        {"finding": finding.score.label, "probability": finding.score.probability},
                        encoding,
                    )
                )
            # Its own series: SeriesDescription is per series and says "summary", not "heatmap".
            summary_sc = build_summary_overlay(
                image=findings,
                algorithm=algorithm,
                series_instance_uid=uid("summary-series", *suffix),
                sop_instance_uid=uid("summary", source_uid, *suffix),
                series_number=JPEG_SUMMARY_SERIES_NUMBER if jpeg else SUMMARY_SERIES_NUMBER,
                instance_number=index + 1,
                content_datetime=when,
                transfer_syntax_uid=syntax,
                max_side=options.overlay_max_side,
            )
            present = [f.score.label for f in findings.present()]
            yield linked(
                BuiltResult(
                    ResultKind.SUMMARY_SC, summary_sc, source_uid, {"present": present}, encoding
                )
            )
        if options.segmentation:
            seg = build_probability_segmentation(
                image=findings,
                algorithm=algorithm,
                series_instance_uid=uid("seg-series"),
                sop_instance_uid=uid("seg", source_uid),
                series_number=SEG_SERIES_NUMBER,
                instance_number=index + 1,
                content_datetime=when,
            )
            if seg is not None:
                yield linked(BuiltResult(ResultKind.PROBABILITY_SEG, seg, source_uid, {}))
        if options.presentation_state:
            gsps = build_region_annotations(
                image=findings,
                algorithm=algorithm,
                series_instance_uid=uid("gsps-series"),
                sop_instance_uid=uid("gsps", source_uid),
                series_number=GSPS_SERIES_NUMBER,
                instance_number=index + 1,
                content_datetime=when,
            )
            if gsps is not None:
                yield linked(BuiltResult(ResultKind.REGION_GSPS, gsps, source_uid, {}))


def build_report_result(
    job: JobIdentity,
    algorithm: AlgorithmInfo,
    images: Sequence[ImageFindings],
    image_results: Sequence[BuiltResult],
) -> BuiltResult:
    """The job's TID 1500 findings report, listing ``image_results`` (the job's images from
    ``build_image_results``) as its evidence. Pure: no model, no I/O."""
    uid = _Uids(job, algorithm)
    # Both encodings: a destination that gets only the JPEG copies finds them from the SR too.
    evidence: list[Dataset] = [r.dataset for r in image_results]
    report = build_findings_report(
        images=images,
        algorithm=algorithm,
        series_instance_uid=uid("sr-series"),
        sop_instance_uid=_report_reference(uid).sop_instance_uid,
        series_number=SR_SERIES_NUMBER,
        instance_number=1,
        evidence=evidence,
        content_datetime=job.created_at,
        version=job.version,
        amends=job.amends,
    )
    summary: dict[str, object] = {
        "version": job.version,
        "amends": None if job.amends is None else str(job.amends.SOPInstanceUID),
        "findings": {
            f.sop_instance_uid: {r.score.label: round(r.score.probability, 6) for r in f.findings}
            for f in images
        },
        "present": {f.sop_instance_uid: [r.score.label for r in f.present()] for f in images},
    }
    link_job_objects([report], _job_step(job, algorithm, uid))
    return BuiltResult(ResultKind.FINDINGS_SR, report, None, summary)


def not_analysed(
    job: JobIdentity,
    algorithm: AlgorithmInfo,
    sources: Sequence[Dataset],
    reasons: Mapping[str, str],
) -> list[BuiltResult]:
    """The SR that tells the radiologist the node saw the study and why it did not analyse it."""
    if not sources:
        return []
    uid = _Uids(job, algorithm)
    readable = {str(ds.SOPInstanceUID) for ds in sources}
    report = build_not_analysed_report(
        sources=sources,
        reasons={k: v for k, v in reasons.items() if k in readable},
        algorithm=algorithm,
        series_instance_uid=uid("not-analysed-series"),
        sop_instance_uid=uid("not-analysed"),
        series_number=NOT_ANALYSED_SERIES_NUMBER,
        instance_number=1,
        content_datetime=job.created_at,
    )
    link_job_objects([report], _job_step(job, algorithm, uid))
    return [BuiltResult(ResultKind.NOT_ANALYSED_SR, report, None, {"reasons": dict(reasons)})]
