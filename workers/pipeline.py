"""The chest X-ray pipeline: where stored instances, models and result builders meet.

claim job → load inputs → select frontal chest images (and, for an age-restricted model, patients
within the card's age range) → preprocess → model: probabilities + one heatmap per label (CAMs for
classifier-cam/1, the in-graph map for probabilities-heatmap/1) → SC overlays and a TID 1500 SR
with deterministic UIDs → store, record → queue deliveries.
"""

import logging
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.deliveries import ensure_deliveries, reopen_delivery
from db.jobs import claim_job, finish_job
from db.models import DeliveryState, Instance, Job, JobState, Result, ResultKind
from db.session import transaction
from models.cam import cam_to_image
from models.card import InputContract
from models.labels import finding_code
from models.preprocess import prepare_image
from models.registry import ModelEntry
from models.runtime import load_model
from radlight.errors import ModelError, NotAnalysableError
from radlight.logs import log_context
from radlight.uids import deterministic_uid
from workers.context import WorkerContext
from workers.imaging import check_age_range, check_input_contract, load_frontal_chest
from workers.results import (
    AlgorithmInfo,
    FindingScore,
    build_findings_report,
    build_heatmap_overlay,
)

logger = logging.getLogger(__name__)

SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902


@dataclass(frozen=True)
class AnalysedImage:
    source: Dataset
    display: NDArray[np.uint8]


@dataclass(frozen=True)
class BuiltResult:
    kind: ResultKind
    dataset: Dataset
    source_sop_instance_uid: str | None
    summary: dict[str, object]


@dataclass(frozen=True)
class JobInputs:
    job_id: int
    study_instance_uid: str
    input_hash: str
    model_name: str
    model_version: str | None
    created_at: datetime  # the results' content date/time, so a re-run is byte-identical
    instances: list[tuple[str, str]]  # (sop instance uid, relative path)


def _load_inputs(session: Session, job_id: int) -> JobInputs:
    job = session.get(Job, job_id)
    if job is None:
        raise ValueError(f"job {job_id} does not exist")
    rows = session.scalars(
        select(Instance)
        .where(Instance.sop_instance_uid.in_(job.input_sop_instance_uids))
        .order_by(Instance.sop_instance_uid)
    )
    return JobInputs(
        job_id=job.id,
        study_instance_uid=job.study.study_instance_uid,
        input_hash=job.input_hash,
        model_name=job.model_name,
        model_version=job.model_version,
        created_at=job.created_at,
        instances=[(row.sop_instance_uid, row.relative_path) for row in rows],
    )


def _read_inputs(
    ctx: WorkerContext, inputs: JobInputs, contract: InputContract | None = None
) -> tuple[list[AnalysedImage], dict[str, str]]:
    analysed: list[AnalysedImage] = []
    skipped: dict[str, str] = {}
    for sop_uid, relative_path in inputs.instances:
        try:
            dataset = dcmread(BytesIO(ctx.store.read(relative_path)))
            display = load_frontal_chest(dataset)
            if contract is not None:
                check_input_contract(dataset, contract.modalities, contract.view_positions)
                check_age_range(dataset, contract.age_range_years, contract.population)
            analysed.append(AnalysedImage(dataset, display))
        except NotAnalysableError as exc:
            skipped[sop_uid] = str(exc)
        except (InvalidDicomError, EOFError, ValueError) as exc:
            skipped[sop_uid] = f"the stored instance cannot be read: {exc}"
    return analysed, skipped


def _result_uid(inputs: JobInputs, entry: ModelEntry, *parts: str) -> str:
    return deterministic_uid(
        inputs.study_instance_uid, inputs.input_hash, entry.card.name, entry.card.version, *parts
    )


def build_results(
    inputs: JobInputs, entry: ModelEntry, images: list[AnalysedImage], overlays_per_image: int
) -> list[BuiltResult]:
    """Run the model over ``images`` and build every result object; pure apart from inference."""
    card = entry.card
    model = load_model(entry)
    prepared = [prepare_image(image.display, card.preprocessing) for image in images]
    output = model.infer(np.stack([p.tensor for p in prepared]))
    cams = output.heatmaps
    algorithm = AlgorithmInfo(name=card.name, version=card.version, sha256=entry.sha256)
    labels = card.label_names

    sc_series = _result_uid(inputs, entry, "sc-series")
    results: list[BuiltResult] = []
    findings_by_source: dict[str, list[FindingScore]] = {}
    overlays = []
    for index, image in enumerate(images):
        source_uid = str(image.source.SOPInstanceUID)
        probabilities = output.probabilities[index]
        findings = [
            FindingScore(label=label, code=finding_code(label), probability=float(probabilities[k]))
            for k, label in enumerate(labels)
        ]
        findings_by_source[source_uid] = findings
        ranked = np.argsort(-probabilities, kind="stable")[:overlays_per_image]
        for rank, k in enumerate(ranked, start=1):
            label = labels[int(k)]
            heatmap = cam_to_image(
                cams[index, int(k)], prepared[index].geometry, image.display.shape
            )
            overlay = build_heatmap_overlay(
                source=image.source,
                display_image=image.display,
                heatmap=heatmap,
                finding=findings[int(k)],
                algorithm=algorithm,
                series_instance_uid=sc_series,
                sop_instance_uid=_result_uid(inputs, entry, "sc", source_uid, label),
                series_number=SC_SERIES_NUMBER,
                instance_number=index * overlays_per_image + rank,
                content_datetime=inputs.created_at,
            )
            overlays.append(overlay)
            results.append(
                BuiltResult(
                    ResultKind.HEATMAP_SC,
                    overlay,
                    source_uid,
                    {"finding": label, "probability": round(float(probabilities[k]), 6)},
                )
            )
    report = build_findings_report(
        sources=[image.source for image in images],
        findings=findings_by_source,
        algorithm=algorithm,
        series_instance_uid=_result_uid(inputs, entry, "sr-series"),
        sop_instance_uid=_result_uid(inputs, entry, "sr"),
        series_number=SR_SERIES_NUMBER,
        instance_number=1,
        overlays=overlays,
        content_datetime=inputs.created_at,
    )
    summary: dict[str, object] = {
        "findings": {
            uid: {f.label: round(f.probability, 6) for f in scores}
            for uid, scores in findings_by_source.items()
        }
    }
    results.append(BuiltResult(ResultKind.FINDINGS_SR, report, None, summary))
    return results


def _encode(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _store_results(
    ctx: WorkerContext,
    session: Session,
    inputs: JobInputs,
    entry: ModelEntry,
    built: list[BuiltResult],
) -> list[int]:
    """Write and record every result, replacing an earlier run's; returns deliveries to send."""
    job = session.get(Job, inputs.job_id)
    assert job is not None
    delivery_ids: list[int] = []
    for item in built:
        ds = item.dataset
        relative = ctx.store.result_path(
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        )
        ctx.store.write(relative, _encode(ds))
        result = session.scalars(
            select(Result).where(Result.sop_instance_uid == str(ds.SOPInstanceUID))
        ).one_or_none()
        if result is None:
            result = Result(sop_instance_uid=str(ds.SOPInstanceUID), job_id=job.id)
            session.add(result)
        result.kind = item.kind
        result.sop_class_uid = str(ds.SOPClassUID)
        result.series_instance_uid = str(ds.SeriesInstanceUID)
        result.source_sop_instance_uid = item.source_sop_instance_uid
        result.relative_path = relative
        result.model_name = entry.card.name
        result.model_version = entry.card.version
        result.summary = item.summary
        session.flush()
        for delivery in ensure_deliveries(
            session=session, result=result, destinations=list(job.route.destinations)
        ):
            if delivery.state in (DeliveryState.SENT, DeliveryState.FAILED):
                reopen_delivery(session=session, delivery_id=delivery.id)
            delivery_ids.append(delivery.id)
    return delivery_ids


def run_job(job_id: int, ctx: WorkerContext) -> JobState | None:
    """Run one job to a final state; returns it, or None when another worker owns the job."""
    with transaction(ctx.sessions) as session:
        if not claim_job(session=session, job_id=job_id):
            logger.info("job %d is not claimable (already running or finished)", job_id)
            return None
        inputs = _load_inputs(session, job_id)
    with log_context(study_uid=inputs.study_instance_uid):
        try:
            entry = ctx.registry.get(inputs.model_name, inputs.model_version)
        except ModelError as exc:
            return _finish(ctx, job_id, JobState.FAILED, f"model unavailable: {exc}")
        images, skipped = _read_inputs(ctx, inputs, entry.card.input)
        skipped_note = "; ".join(f"{uid}: {why}" for uid, why in sorted(skipped.items()))
        if not images:
            return _finish(
                ctx,
                job_id,
                JobState.NOT_ANALYSED,
                f"not analysed: {skipped_note or 'no input instances'}",
                entry,
            )
        try:
            built = build_results(inputs, entry, images, ctx.settings.overlays_per_image)
        except ModelError as exc:
            return _finish(ctx, job_id, JobState.FAILED, f"model failed: {exc}", entry)
        with transaction(ctx.sessions) as session:
            delivery_ids = _store_results(ctx, session, inputs, entry, built)
            finish_job(
                session=session,
                job_id=job_id,
                state=JobState.SUCCEEDED,
                reason=f"some images not analysed: {skipped_note}" if skipped else None,
                model_version=entry.card.version,
                model_sha256=entry.sha256,
            )
        logger.info("job %d succeeded: %d results", job_id, len(built))
        for delivery_id in delivery_ids:
            try:
                ctx.producer.enqueue_delivery(delivery_id)
            except Exception as exc:  # noqa: BLE001 - any broker error; the dispatcher re-queues
                logger.warning("could not queue delivery %d: %s", delivery_id, exc)
        return JobState.SUCCEEDED


def _finish(
    ctx: WorkerContext,
    job_id: int,
    state: JobState,
    reason: str,
    entry: ModelEntry | None = None,
) -> JobState:
    with transaction(ctx.sessions) as session:
        finish_job(
            session=session,
            job_id=job_id,
            state=state,
            reason=reason,
            model_version=entry.card.version if entry else None,
            model_sha256=entry.sha256 if entry else None,
        )
    logger.warning("job %d %s: %s", job_id, state.value, reason)
    return state
