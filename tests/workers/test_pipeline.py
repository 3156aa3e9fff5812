"""The chest X-ray pipeline in-process on real parts: the real NIH DICOM files stored and recorded as
the node does, a route and a job in the database (SQLite and PostgreSQL), the tiny ONNX classifier
installed in a real registry, results written to the real store and deliveries queued on kombu's
filesystem transport.
"""

import hashlib
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select, update

from db.config import upsert_destination, upsert_route
from db.jobs import create_job_if_new, mark_queued
from db.models import Delivery, DeliveryState, Job, JobState, Result, ResultKind
from db.session import transaction
from models.export import BuiltModel
from radlight.contracts import QUEUE_DELIVERY, QUEUE_INFERENCE, TASK_DELIVER
from tests.brokers import folder_messages
from tests.workers.conftest import copy_with_new_uids, receive
from workers.context import WorkerContext
from workers.pipeline import run_job


def make_job(
    ctx: WorkerContext,
    study_id: int,
    sop_instance_uids: list[str],
    *,
    model_name: str,
    model_version: str | None = None,
    destinations: tuple[str, ...] = (),
) -> int:
    """A route and a committed, queued job over ``sop_instance_uids``, as the assembler makes."""
    with transaction(ctx.sessions) as session:
        route = upsert_route(
            session=session,
            name="chest",
            model_name=model_name,
            model_version=model_version,
            modalities=["DX", "CR"],
            destination_names=destinations,
        )
        job = create_job_if_new(
            session=session, study_id=study_id, route=route, sop_instance_uids=sop_instance_uids
        )
        assert job is not None
        session.flush()
        mark_queued(session=session, job_id=job.id)
        return job.id


def get_job(ctx: WorkerContext, job_id: int) -> Job:
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def set_job_state(ctx: WorkerContext, job_id: int, state: JobState) -> None:
    with transaction(ctx.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(state=state))


def results_of(ctx: WorkerContext) -> list[Result]:
    with ctx.sessions() as session:
        return list(session.scalars(select(Result).order_by(Result.sop_instance_uid)))


def result_files(ctx: WorkerContext) -> list[Path]:
    return sorted((ctx.settings.store_dir / "results").rglob("*"))


def file_digests(ctx: WorkerContext) -> dict[str, str]:
    return {
        r.sop_instance_uid: hashlib.sha256(ctx.store.read(r.relative_path)).hexdigest()
        for r in results_of(ctx)
    }


def referenced_uids(ds: pydicom.Dataset) -> set[str]:
    return {str(e.value) for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}


def sop_uid(source: Path | pydicom.Dataset) -> str:
    ds = pydicom.dcmread(source, stop_before_pixels=True) if isinstance(source, Path) else source
    return str(ds.SOPInstanceUID)


def test_job_results_are_stored_recorded_and_deterministic(
    ctx: WorkerContext, tiny_model: BuiltModel, real_dicom_files: list[Path]
) -> None:
    # One study holding both real chest X-rays (the second moved into the first's study).
    first = pydicom.dcmread(real_dicom_files[0])
    second = pydicom.dcmread(real_dicom_files[1])
    second.StudyInstanceUID = first.StudyInstanceUID
    outcome = receive(ctx, first)
    receive(ctx, second)
    inputs = sorted([sop_uid(first), sop_uid(second)])
    job_id = make_job(ctx, outcome.study_id, inputs, model_name=tiny_model.card.name)

    assert run_job(job_id, ctx) is JobState.SUCCEEDED

    job = get_job(ctx, job_id)
    assert (job.state, job.reason, job.attempts) == (JobState.SUCCEEDED, None, 1)
    assert job.model_sha256 == tiny_model.card.sha256
    assert job.model_version == tiny_model.card.version
    results = results_of(ctx)
    overlays = [r for r in results if r.kind is ResultKind.HEATMAP_SC]
    summaries = [r for r in results if r.kind is ResultKind.SUMMARY_SC]
    reports = [r for r in results if r.kind is ResultKind.FINDINGS_SR]
    assert len(reports) == 1
    present = reports[0].summary["present"]
    assert isinstance(present, dict)
    # One overlay per present finding (at most overlays_per_image), one summary per image.
    cap = ctx.settings.overlays_per_image
    assert len(overlays) == sum(min(cap, len(labels)) for labels in present.values())
    assert sorted(r.source_sop_instance_uid or "" for r in summaries) == inputs
    assert {r.source_sop_instance_uid for r in overlays} <= set(inputs)
    assert reports[0].source_sop_instance_uid is None
    assert sorted(reports[0].summary["findings"]) == inputs
    expected_files = len(overlays) + len(summaries) + len(reports)
    labels = set(tiny_model.card.label_names)
    for result in results:
        assert result.job_id == job_id
        assert (result.model_name, result.model_version) == (
            tiny_model.card.name,
            tiny_model.card.version,
        )
        ds = pydicom.dcmread(ctx.store.absolute(result.relative_path))
        assert ds.SOPInstanceUID == result.sop_instance_uid
        assert ds.SOPClassUID == result.sop_class_uid
        assert ds.SeriesInstanceUID == result.series_instance_uid
        assert ds.StudyInstanceUID == first.StudyInstanceUID
        if result.kind is ResultKind.HEATMAP_SC:
            assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == (
                result.source_sop_instance_uid
            )
            assert result.summary["finding"] in labels
            assert 0.0 <= float(result.summary["probability"]) <= 1.0
        elif result.kind is ResultKind.SUMMARY_SC:
            assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == (
                result.source_sop_instance_uid
            )
        else:
            assert set(inputs) <= referenced_uids(ds)
    assert len([p for p in result_files(ctx) if p.is_file()]) == expected_files  # no temp files
    before = file_digests(ctx)

    # A re-run of the same job replaces its results: same UIDs, same bytes, no new rows.
    set_job_state(ctx, job_id, JobState.QUEUED)
    assert run_job(job_id, ctx) is JobState.SUCCEEDED
    assert file_digests(ctx) == before
    assert len(results_of(ctx)) == expected_files
    assert len([p for p in result_files(ctx) if p.is_file()]) == expected_files
    assert get_job(ctx, job_id).attempts == 2

    # A finished or running job cannot be claimed again: nothing runs, nothing changes.
    assert run_job(job_id, ctx) is None
    set_job_state(ctx, job_id, JobState.RUNNING)
    assert run_job(job_id, ctx) is None
    job = get_job(ctx, job_id)
    assert (job.state, job.attempts) == (JobState.RUNNING, 2)


def test_deliveries_are_queued_and_reopened_by_a_rerun(
    ctx: WorkerContext, tiny_model: BuiltModel, real_dicom_files: list[Path]
) -> None:
    outcome = receive(ctx, real_dicom_files[0])
    with transaction(ctx.sessions) as session:
        upsert_destination(
            session=session, name="pacs", host="127.0.0.1", port=104, ae_title="PACS"
        )
    job_id = make_job(
        ctx,
        outcome.study_id,
        [sop_uid(real_dicom_files[0])],
        model_name=tiny_model.card.name,
        destinations=("pacs",),
    )

    assert run_job(job_id, ctx) is JobState.SUCCEEDED

    with ctx.sessions() as session:
        deliveries = list(session.scalars(select(Delivery).order_by(Delivery.id)))
    with ctx.sessions() as session:
        result_count = len(list(session.scalars(select(Result))))
    assert result_count >= 2  # at least the summary SC and the SR
    assert len(deliveries) == result_count  # every result, to the one destination
    assert {(d.state, d.attempts) for d in deliveries} == {(DeliveryState.PENDING, 0)}
    ids = [d.id for d in deliveries]
    # File names start with a millisecond clock, so two messages of one millisecond may swap.
    messages = folder_messages(ctx.settings.queue_dir, QUEUE_DELIVERY)
    assert sorted((m.kwargs["delivery_id"], m.task, m.args, m.kwargs) for m in messages) == [
        (i, TASK_DELIVER, [], {"delivery_id": i}) for i in ids
    ]
    assert folder_messages(ctx.settings.queue_dir, QUEUE_INFERENCE) == []

    # Deliveries that failed for good get a fresh start (and budget) when the job is re-run.
    with transaction(ctx.sessions) as session:
        session.execute(
            update(Delivery).values(
                state=DeliveryState.FAILED, attempts=5, last_status=0xA900, reason="refused"
            )
        )
    set_job_state(ctx, job_id, JobState.QUEUED)
    assert run_job(job_id, ctx) is JobState.SUCCEEDED

    with ctx.sessions() as session:
        again = list(session.scalars(select(Delivery).order_by(Delivery.id)))
    assert [d.id for d in again] == ids
    for delivery in again:
        assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 0)
        assert (delivery.last_status, delivery.reason) == (None, None)
    messages = folder_messages(ctx.settings.queue_dir, QUEUE_DELIVERY)
    assert sorted(m.kwargs["delivery_id"] for m in messages) == sorted(ids * 2)


def test_lateral_only_study_is_not_analysed(
    ctx: WorkerContext, tiny_model: BuiltModel, real_dicom_files: list[Path]
) -> None:
    lateral = copy_with_new_uids(real_dicom_files[0], ViewPosition="LL")
    outcome = receive(ctx, lateral)
    job_id = make_job(ctx, outcome.study_id, [sop_uid(lateral)], model_name=tiny_model.card.name)

    assert run_job(job_id, ctx) is JobState.NOT_ANALYSED

    job = get_job(ctx, job_id)
    assert job.state is JobState.NOT_ANALYSED
    assert job.reason is not None
    assert job.reason.startswith("not analysed: ")
    assert f"{sop_uid(lateral)}: view position LL is lateral" in job.reason
    # The radiologist is told: one "not analysed" SR with the coded reason, nothing else.
    (report,) = results_of(ctx)
    assert report.kind is ResultKind.NOT_ANALYSED_SR
    ds = pydicom.dcmread(ctx.store.absolute(report.relative_path))
    assert sop_uid(lateral) in referenced_uids(ds)
    assert "lateral" in str(report.summary["reasons"]).lower()
    assert len([p for p in result_files(ctx) if p.is_file()]) == 1


def test_mixed_study_analyses_the_frontal_view_and_names_the_skipped_one(
    ctx: WorkerContext, tiny_model: BuiltModel, real_dicom_files: list[Path]
) -> None:
    frontal = copy_with_new_uids(real_dicom_files[0], ViewPosition="PA")
    lateral = copy_with_new_uids(
        real_dicom_files[1], study_uid=str(frontal.StudyInstanceUID), ViewPosition="LL"
    )
    outcome = receive(ctx, frontal)
    receive(ctx, lateral)
    job_id = make_job(
        ctx, outcome.study_id, [sop_uid(frontal), sop_uid(lateral)], model_name=tiny_model.card.name
    )

    assert run_job(job_id, ctx) is JobState.SUCCEEDED

    job = get_job(ctx, job_id)
    assert job.reason is not None
    assert job.reason.startswith("some images not analysed: ")
    assert f"{sop_uid(lateral)}: view position LL is lateral" in job.reason
    assert sop_uid(frontal) not in job.reason
    results = results_of(ctx)
    assert {r.kind for r in results} <= {
        ResultKind.FINDINGS_SR,
        ResultKind.HEATMAP_SC,
        ResultKind.SUMMARY_SC,
    }
    (summary,) = [r for r in results if r.kind is ResultKind.SUMMARY_SC]
    assert summary.source_sop_instance_uid == sop_uid(frontal)
    for overlay in [r for r in results if r.kind is ResultKind.HEATMAP_SC]:
        assert overlay.source_sop_instance_uid == sop_uid(frontal)
    (report,) = [r for r in results if r.kind is ResultKind.FINDINGS_SR]
    referenced = referenced_uids(pydicom.dcmread(ctx.store.absolute(report.relative_path)))
    assert sop_uid(frontal) in referenced
    assert sop_uid(lateral) not in referenced


def test_model_file_changed_after_install_fails_the_job(
    ctx: WorkerContext, tiny_model: BuiltModel, real_dicom_files: list[Path]
) -> None:
    name = tiny_model.card.name
    # The model works as installed ...
    ok = receive(ctx, real_dicom_files[0])
    ok_job = make_job(ctx, ok.study_id, [sop_uid(real_dicom_files[0])], model_name=name)
    assert run_job(ok_job, ctx) is JobState.SUCCEEDED
    results_before = {r.sop_instance_uid for r in results_of(ctx)}
    files_before = result_files(ctx)

    # ... then one byte of the installed file changes (same size): the next job refuses it.
    card = tiny_model.card
    installed = ctx.settings.models_dir / card.name / card.version / card.onnx_file
    data = bytearray(installed.read_bytes())
    data[-1] ^= 0xFF
    installed.write_bytes(bytes(data))
    other = receive(ctx, real_dicom_files[1])
    job_id = make_job(ctx, other.study_id, [sop_uid(real_dicom_files[1])], model_name=name)

    assert run_job(job_id, ctx) is JobState.FAILED

    job = get_job(ctx, job_id)
    assert job.reason is not None
    assert job.reason.startswith("model unavailable: ")
    assert "sha256" in job.reason
    assert card.sha256 in job.reason  # what the card promises, beside what the file has
    assert {r.sop_instance_uid for r in results_of(ctx)} == results_before
    assert result_files(ctx) == files_before


@pytest.mark.parametrize(
    ("model_name", "model_version", "why"),
    [
        ("no-such-model", None, "no model named 'no-such-model' is installed"),
        (None, "9.9.9", "9.9.9 is not installed"),
    ],
    ids=["unknown-name", "unknown-version"],
)
def test_route_naming_a_model_that_is_not_installed_fails_the_job(
    ctx: WorkerContext,
    tiny_model: BuiltModel,
    real_dicom_files: list[Path],
    model_name: str | None,
    model_version: str | None,
    why: str,
) -> None:
    outcome = receive(ctx, real_dicom_files[0])
    job_id = make_job(
        ctx,
        outcome.study_id,
        [sop_uid(real_dicom_files[0])],
        model_name=model_name or tiny_model.card.name,
        model_version=model_version,
    )

    assert run_job(job_id, ctx) is JobState.FAILED

    job = get_job(ctx, job_id)
    assert job.reason is not None
    assert job.reason.startswith("model unavailable: ")
    assert why in job.reason
    with ctx.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 0
    assert result_files(ctx) == []
