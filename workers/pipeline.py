"""The chest X-ray pipeline: where the database, the store, the models and the builders meet.

claim job → load inputs → select frontal chest images within the model card's contract (others
are "not analysed", with the reason) → ``workers.analysis`` (model, findings, then the result
objects one at a time, each stored and, with inline delivery, sent while the next is built:
``workers.result_stream``) → record the results, replacing an earlier run's, with the job's end
→ record how each send went, and queue what is left to send. A job whose images were all refused
sends a "not analysed" SR back instead.

A radiology report in the input set (a Basic Text, Enhanced or Comprehensive SR that RadLight did
not write, ``dicom_node.reports``) is not an image to refuse: its text is grounded on the first
analysed image (``workers.grounding``) and the grounded SR and SCs join the job's results. A job
made for a report posted through the API (``Job.report_id``) grounds that text only.
"""

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from io import BytesIO
from itertools import chain

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db.deliveries import claim_deliveries
from db.jobs import claim_job, finish_job, record_stages
from db.models import (
    Destination,
    Instance,
    Job,
    JobState,
    Result,
    ResultKind,
    Route,
    SCEncoding,
)
from db.results import ResultRecord, record_results
from db.session import transaction
from dicom_node.reports import is_report, report_text
from dicom_node.scu import Peer
from models.card import InputContract
from models.precision import select_precision
from models.registry import ModelEntry
from radlight.errors import ModelError, NotAnalysableError, StoreError
from radlight.logs import log_context
from radlight.stages import StageClock
from workers.analysis import (
    AnalysedImage,
    BuiltResult,
    JobIdentity,
    ResultOptions,
    algorithm_of,
    iter_results,
    not_analysed,
    result_classes,
    run_model,
)
from workers.context import WorkerContext
from workers.delivery import record_send_outcomes
from workers.grounding import ground_report
from workers.imaging import check_age_range, check_input_contract, load_frontal_chest
from workers.lease import held_lease, worker_name
from workers.result_stream import ResultStream, StreamedResult, Target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobInputs:
    job_id: int
    identity: JobIdentity
    model_name: str
    model_version: str | None
    options: ResultOptions
    instances: list[tuple[str, str]]  # (sop instance uid, relative path)
    thresholds: dict[str, float]  # the route's per-site thresholds, finding -> value
    waited_ms: dict[str, float]  # receive, assemble and queue wait, from the rows' timestamps
    posted_report: str | None = None  # the text of the API-posted report this job grounds
    targets: tuple[Target, ...] = ()  # the route's enabled destinations, where results are sent


@dataclass(frozen=True)
class ReadInputs:
    analysed: list[AnalysedImage]
    skipped: dict[str, str]  # sop instance uid → why not analysed
    skipped_datasets: list[Dataset]  # the refused ones that could still be read
    reports: list[tuple[Dataset, str]]  # report SRs in the input set, with their text


def _options(route: Route, ctx: WorkerContext) -> ResultOptions:
    return ResultOptions(
        max_overlays_per_image=ctx.settings.overlays_per_image,
        default_threshold=ctx.settings.default_threshold,
        segmentation=route.produce_seg,
        presentation_state=route.produce_gsps,
        jpeg_copies=any(
            d.enabled and d.sc_encoding is SCEncoding.JPEG_BASELINE for d in route.destinations
        ),
        overlay_max_side=ctx.settings.overlay_max_side or None,
    )


def _load_inputs(session: Session, job_id: int, ctx: WorkerContext) -> JobInputs:
    job = session.get(Job, job_id)
    if job is None:
        raise ValueError(f"job {job_id} does not exist")
    rows = session.scalars(
        select(Instance)
        .where(Instance.sop_instance_uid.in_(job.input_sop_instance_uids))
        .order_by(Instance.sop_instance_uid)
    )
    version, amends = _previous_version(session, job, ctx)
    return JobInputs(
        job_id=job.id,
        identity=JobIdentity(
            job_id=job.id,
            study_instance_uid=job.study.study_instance_uid,
            input_hash=job.input_hash,
            created_at=job.created_at,
            version=version,
            amends=amends,
        ),
        model_name=job.model_name,
        model_version=job.model_version,
        options=_options(job.route, ctx),
        instances=[(row.sop_instance_uid, row.relative_path) for row in rows],
        thresholds=dict(job.route.thresholds or {}),
        waited_ms=_waited_ms(job),
        posted_report=job.report.text if job.report is not None else None,
        targets=tuple(
            Target(destination.id, Peer.of(destination), destination.sc_encoding)
            for destination in job.route.destinations
            if destination.enabled
        ),
    )


def _previous_version(session: Session, job: Job, ctx: WorkerContext) -> tuple[int, Dataset | None]:
    """This job's report version and the report it amends: the earlier jobs of the same study and
    route that made a findings report (a late instance re-opened the study) come before it."""
    earlier = session.execute(
        select(Result.job_id, Result.relative_path)
        .join(Job, Result.job_id == Job.id)
        .where(
            Job.study_id == job.study_id,
            Job.route_id == job.route_id,
            Job.id < job.id,
            Result.kind == ResultKind.FINDINGS_SR,
        )
        .order_by(Job.id)
    ).all()
    version = len({row.job_id for row in earlier}) + 1
    if not earlier:
        return version, None
    try:
        return version, dcmread(BytesIO(ctx.store.read(earlier[-1].relative_path)))
    except (StoreError, InvalidDicomError, EOFError) as exc:
        # Still a new version; only the link to the one before is missing, and said so.
        logger.warning("job %d: the report it amends cannot be read: %s", job.id, exc)
        return version, None


def _waited_ms(job: Job) -> dict[str, float]:
    """The stages before the worker, from timestamps: receiving the study, assembling it into
    this job, and the job's wait for a worker (``started_at`` is the claim's time)."""
    study = job.study

    def ms(start: datetime | None, end: datetime | None) -> float:
        if start is None or end is None:
            return 0.0
        return max((end - start).total_seconds() * 1000.0, 0.0)

    return {
        "receive": ms(study.first_received_at, study.last_received_at),
        "assemble": ms(study.last_received_at, job.created_at),
        "queue_wait": ms(job.created_at, job.started_at),
    }


def _with_site_thresholds(entry: ModelEntry, thresholds: Mapping[str, float]) -> ModelEntry:
    """The entry as this site runs it: the route's thresholds replace the card's for the findings
    they name (values outside [0, 1] are ignored; the API never stores one)."""
    wanted = {
        k: float(v) for k, v in thresholds.items() if isinstance(v, int | float) and 0 <= v <= 1
    }
    if not wanted:
        return entry
    labels = tuple(
        label.model_copy(update={"threshold": wanted[label.name]})
        if label.name in wanted
        else label
        for label in entry.card.labels
    )
    return replace(entry, card=entry.card.model_copy(update={"labels": labels}))


def _read_inputs(ctx: WorkerContext, inputs: JobInputs, contract: InputContract) -> ReadInputs:
    read = ReadInputs([], {}, [], [])
    for sop_uid, relative_path in inputs.instances:
        dataset: Dataset | None = None
        try:
            dataset = dcmread(BytesIO(ctx.store.read(relative_path)))
            if is_report(str(dataset.get("SOPClassUID", ""))):
                text = report_text(dataset)
                if text is None:
                    raise NotAnalysableError("the report SR has no text to ground")
                read.reports.append((dataset, text))
                continue
            display = load_frontal_chest(dataset)
            check_input_contract(dataset, contract.modalities, contract.view_positions)
            check_age_range(dataset, contract.age_range_years, contract.population)
            read.analysed.append(AnalysedImage(dataset, display))
        except NotAnalysableError as exc:
            read.skipped[sop_uid] = str(exc)
            if dataset is not None:
                read.skipped_datasets.append(dataset)
        except (InvalidDicomError, EOFError, ValueError) as exc:
            read.skipped[sop_uid] = f"the stored instance cannot be read: {exc}"
    return read


def _destinations_for(item: BuiltResult, destinations: list[Destination]) -> list[Destination]:
    """A Secondary Capture goes only where its encoding is wanted; everything else goes everywhere."""
    if item.sc_encoding is None:
        return destinations
    return [d for d in destinations if d.sc_encoding is item.sc_encoding]


def _record_results(
    session: Session, inputs: JobInputs, entry: ModelEntry, stored: list[StreamedResult]
) -> list[dict[int, int]]:
    """Record every stored result and its deliveries, replacing an earlier run's; returns each
    result's deliveries (destination id → delivery id)."""
    job = session.get(Job, inputs.job_id)
    assert job is not None
    destinations = list(job.route.destinations)
    records = [
        ResultRecord(
            sop_instance_uid=str(streamed.item.dataset.SOPInstanceUID),
            sop_class_uid=str(streamed.item.dataset.SOPClassUID),
            series_instance_uid=str(streamed.item.dataset.SeriesInstanceUID),
            kind=streamed.item.kind,
            sc_encoding=streamed.item.sc_encoding,
            source_sop_instance_uid=streamed.item.source_sop_instance_uid,
            relative_path=streamed.relative_path,
            model_name=entry.card.name,
            model_version=entry.card.version,
            summary=streamed.item.summary,
            destinations=_destinations_for(streamed.item, destinations),
        )
        for streamed in stored
    ]
    return record_results(session=session, job_id=job.id, records=records)


def _streamed_deliveries(
    stream: ResultStream, deliveries: list[dict[int, int]]
) -> list[dict[int, int]]:
    """Of each result's deliveries, those its stream sends (destination id → delivery id): to
    the targets the job loaded that want it. A destination enabled meanwhile is left out."""
    return [
        {
            target.destination_id: mine[target.destination_id]
            for target in stream.targets
            if target.wants(streamed.item) and target.destination_id in mine
        }
        for streamed, mine in zip(stream.results, deliveries, strict=True)
    ]


def run_job(job_id: int, ctx: WorkerContext) -> JobState | None:
    """Run one job to a final state; returns it, or None when another worker owns the job.

    The time spent in every stage is recorded on the job (``Job.stage_ms``).
    """
    worker, lease_s = worker_name(), ctx.settings.job_lease_s
    clock = StageClock()
    with transaction(ctx.sessions) as session:
        if not claim_job(session=session, job_id=job_id, worker=worker, lease_s=lease_s):
            logger.info("job %d is not claimable (already running or finished)", job_id)
            return None
        inputs = _load_inputs(session, job_id, ctx)
    for name, waited in inputs.waited_ms.items():
        clock.add(name, waited)
    with (
        log_context(study_uid=inputs.identity.study_instance_uid),
        held_lease(ctx.sessions, job_id, worker, lease_s),
    ):
        try:
            installed = ctx.registry.get(inputs.model_name, inputs.model_version)
            entry = _with_site_thresholds(
                select_precision(installed, ctx.settings.inference_precision), inputs.thresholds
            )
        except ModelError as exc:
            return _finish(ctx, job_id, JobState.FAILED, f"model unavailable: {exc}", clock=clock)
        with clock.stage("decode"):
            read = _read_inputs(ctx, inputs, entry.card.input)
        skipped_note = "; ".join(f"{uid}: {why}" for uid, why in sorted(read.skipped.items()))
        if read.analysed:
            state = JobState.SUCCEEDED
            reason = f"some images not analysed: {skipped_note}" if read.skipped else None
            try:
                results = _analyse(inputs, entry, read, clock)
            except ModelError as exc:
                return _finish(
                    ctx, job_id, JobState.FAILED, f"model failed: {exc}", entry, clock=clock
                )
        else:
            state = JobState.NOT_ANALYSED
            nothing = "no image to ground the report on" if read.reports else "no input instances"
            reason = f"not analysed: {skipped_note or nothing}"
            results = iter(
                not_analysed(
                    inputs.identity, algorithm_of(entry), read.skipped_datasets, read.skipped
                )
            )
        targets = inputs.targets if ctx.settings.delivery_inline else ()
        expected = partial(result_classes, inputs.options)
        with ResultStream(ctx.store, ctx.sender, targets, expected) as stream:
            with clock.stage("build"):
                for item in results:
                    stream.add(item)
                stored = stream.stored()
            with clock.stage("build"), transaction(ctx.sessions) as session:
                deliveries = _record_results(session, inputs, entry, stored)
                streamed = _streamed_deliveries(stream, deliveries)
                attempts = claim_deliveries(
                    session=session, delivery_ids=[i for mine in streamed for i in mine.values()]
                )
                finish_job(
                    session=session,
                    job_id=job_id,
                    state=state,
                    reason=reason,
                    model_version=entry.card.version,
                    model_sha256=entry.sha256,
                )
                record_stages(session=session, job_id=job_id, stage_ms=clock.ordered())
            log = logger.info if state is JobState.SUCCEEDED else logger.warning
            log(
                "job %d %s: %d results%s",
                job_id,
                state.value,
                len(stored),
                f" ({reason})" if reason else "",
            )
            _deliver(ctx, job_id, stream, deliveries, streamed, attempts, clock)
        return state


def _analyse(
    inputs: JobInputs, entry: ModelEntry, read: ReadInputs, clock: StageClock
) -> Iterator[BuiltResult]:
    """The job's results, built as they are taken: findings (unless it only grounds a posted
    report), then grounded reports on the first analysed image (sorted by SOP Instance UID).
    Every model runs before this returns, so a ModelError comes before any result is sent."""
    image = read.analysed[0]
    max_side = inputs.options.overlay_max_side
    if inputs.posted_report is not None:
        with clock.stage("build"):
            return iter(
                ground_report(inputs.identity, entry, image, inputs.posted_report, None, max_side)
            )
    findings = run_model(entry, read.analysed, inputs.options, clock)
    with clock.stage("build"):
        grounded = [
            result
            for report, text in read.reports
            for result in ground_report(inputs.identity, entry, image, text, report, max_side)
        ]
    findings_results = iter_results(inputs.identity, algorithm_of(entry), findings, inputs.options)
    return chain(findings_results, grounded)


def _deliver(
    ctx: WorkerContext,
    job_id: int,
    stream: ResultStream,
    deliveries: list[dict[int, int]],
    streamed: list[dict[int, int]],
    attempts: dict[int, int],
    clock: StageClock,
) -> None:
    """Wait for the results the stream is sending (``delivery_inline``) and record how each went,
    with the delivery stage; then queue, each as its own task, what failed for a retry and every
    delivery the stream did not send (inline delivery off, or a destination enabled meanwhile)."""
    queued: list[tuple[int, float | None]] = []
    if attempts:
        with clock.stage("deliver"):
            outcomes = {
                delivery_id: outcome
                for sent, mine in zip(stream.sent(), streamed, strict=True)
                for destination_id, outcome in sent.items()
                if (delivery_id := mine.get(destination_id)) is not None
            }
            queued = record_send_outcomes(ctx, attempts, outcomes)
        try:
            with transaction(ctx.sessions) as session:
                record_stages(session=session, job_id=job_id, stage_ms=clock.ordered())
        except SQLAlchemyError as exc:  # the results are out; only a timing is lost
            logger.warning("could not record job %d's delivery time: %s", job_id, exc)
    sending = {delivery_id for mine in streamed for delivery_id in mine.values()}
    queued += [
        (delivery_id, None)
        for mine in deliveries
        for delivery_id in mine.values()
        if delivery_id not in sending
    ]
    for delivery_id, countdown in queued:
        try:
            ctx.producer.enqueue_delivery(delivery_id, countdown=countdown)
        except Exception as exc:  # noqa: BLE001 - any broker error; the dispatcher re-queues
            logger.warning("could not queue delivery %d: %s", delivery_id, exc)


def _finish(
    ctx: WorkerContext,
    job_id: int,
    state: JobState,
    reason: str,
    entry: ModelEntry | None = None,
    *,
    clock: StageClock,
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
        record_stages(session=session, job_id=job_id, stage_ms=clock.ordered())
    logger.warning("job %d %s: %s", job_id, state.value, reason)
    return state
