"""Grounded reports in the worker: a study with an image and its report SR (made here, valid per
dciodvfy) runs through the real pipeline with the tiny classifier; the grounded SR passes dciodvfy
with no error, lists every sentence with its region, and the same phrases build the same bytes. A
report posted through the operations layer makes a job that grounds it alone."""

from datetime import datetime
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from db.models import Job, JobState, Result, ResultKind, Study
from db.session import transaction
from dicom_node.pixels import to_display_uint8
from models.grounding import grounder_for
from radlight import NOT_FOR_PRIMARY_DIAGNOSIS
from tests.dicom_io import strict_reading, to_bytes
from tests.grounding_study import REPORT, phantom_image, report_sr, save
from tests.peers import dciodvfy_errors
from tests.workers.conftest import receive
from tests.workers.test_pipeline import make_job, results_of
from workers.analysis import AnalysedImage, JobIdentity, algorithm_of
from workers.context import WorkerContext
from workers.grounding import build_grounded_results
from workers.pipeline import run_job


def _texts(items: pydicom.Sequence) -> list[str]:
    found: list[str] = []
    for item in items:
        if item.ValueType == "TEXT":
            found.append(str(item.TextValue))
        found.extend(_texts(item.get("ContentSequence", [])))
    return found


def _regions(items: pydicom.Sequence) -> list[Dataset]:
    found: list[Dataset] = []
    for item in items:
        if item.ValueType == "SCOORD":
            found.append(item)
        found.extend(_regions(item.get("ContentSequence", [])))
    return found


@pytest.fixture
def study(ctx: WorkerContext) -> tuple[Dataset, Dataset, int]:
    image = phantom_image("worker")
    report = report_sr(image)
    outcome = receive(ctx, image)
    receive(ctx, report)
    return image, report, outcome.study_id


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the posted test runs both
def test_a_report_sr_in_the_input_set_is_grounded(
    ctx: WorkerContext, tiny_model: object, study: tuple[Dataset, Dataset, int], tmp_path: Path
) -> None:
    image, report, study_id = study
    name = ctx.registry.list()[0].name
    job_id = make_job(
        ctx, study_id, [str(image.SOPInstanceUID), str(report.SOPInstanceUID)], model_name=name
    )
    assert run_job(job_id, ctx) is JobState.SUCCEEDED
    results = results_of(ctx)
    kinds = [r.kind for r in results]
    assert ResultKind.FINDINGS_SR in kinds  # the image is still analysed as before
    grounded_sr = next(r for r in results if r.kind is ResultKind.GROUNDED_SR)
    scs = [r for r in results if r.kind is ResultKind.GROUNDED_SC]
    # Sentences with a region: the two effusion sentences and the two consolidation ones, and
    # the impression's effusion; "No pneumothorax" and "Heart size is normal" are negated.
    assert sorted(r.summary["sentence"] for r in scs) == [1, 2, 5, 6]
    assert grounded_sr.summary["sentences"] == 6
    assert grounded_sr.summary["report_sop_instance_uid"] == str(report.SOPInstanceUID)
    assert {"Pneumothorax", "Cardiomegaly"} <= set(grounded_sr.summary["negated"])

    path = ctx.store.absolute(grounded_sr.relative_path)
    errors, output = dciodvfy_errors(path)
    assert errors == [], output
    with strict_reading():
        ds = pydicom.dcmread(path)
    sr = hd.sr.ComprehensiveSR.from_dataset(ds)
    texts = _texts(ds.ContentSequence)
    for sentence in ("No pneumothorax", "Heart size is normal", "Right pleural effusion"):
        assert sentence in texts
    assert NOT_FOR_PRIMARY_DIAGNOSIS in str(ds.ContentSequence)
    assert sr.SeriesDescription.endswith("not for primary diagnosis")
    regions = _regions(ds.ContentSequence)
    assert len(regions) == 6  # one per grounded phrase of those sentences (2 + 1 + 1 + 2)
    for region in regions:
        ref = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == image.SOPInstanceUID
        xs, ys = region.GraphicData[0::2], region.GraphicData[1::2]
        assert all(0 <= x <= image.Columns for x in xs)
        assert all(0 <= y <= image.Rows for y in ys)
        assert (xs[0], ys[0]) == (xs[-1], ys[-1])  # closed
    evidence = {
        str(item.ReferencedSOPInstanceUID)
        for study_item in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert {str(report.SOPInstanceUID), *(r.sop_instance_uid for r in scs)} <= evidence
    for sc in scs:
        sc_ds = pydicom.dcmread(ctx.store.absolute(sc.relative_path))
        assert sc_ds.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert sc_ds.BurnedInAnnotation == "YES"
        assert f"Report sentence {sc.summary['sentence']}" in sc_ds.ImageComments
    errors, output = dciodvfy_errors(ctx.store.absolute(scs[0].relative_path))
    assert errors == [], output

    # Pure and deterministic: the same phrases give the same objects, byte for byte.
    entry = ctx.registry.get(name)
    display = to_display_uint8(image)
    phrases = grounder_for(entry).ground(display / 255.0, REPORT)
    identity = JobIdentity(job_id, str(image.StudyInstanceUID), "input-hash", datetime(2026, 1, 2))
    twice = [
        build_grounded_results(
            identity, algorithm_of(entry), AnalysedImage(image, display), REPORT, phrases, report
        )
        for _ in range(2)
    ]
    assert [to_bytes(r.dataset) for r in twice[0]] == [to_bytes(r.dataset) for r in twice[1]]


def test_a_posted_report_gets_its_own_grounding_job(
    ctx: WorkerContext, study: tuple[Dataset, Dataset, int]
) -> None:
    from db.jobs import create_report_job

    image, _, study_id = study
    name = ctx.registry.list()[0].name
    first = make_job(ctx, study_id, [str(image.SOPInstanceUID)], model_name=name)
    assert run_job(first, ctx) is JobState.SUCCEEDED
    text = "Left upper zone consolidation. No effusion."
    with transaction(ctx.sessions) as session:
        made = create_report_job(session=session, study_id=study_id, text=text, created_by="t")
        assert made is not None
        job, created = made
        assert created
        again = create_report_job(session=session, study_id=study_id, text=text, created_by="t")
        assert again is not None
        assert again == (job, False)
        job_id = job.id
    assert run_job(job_id, ctx) is JobState.SUCCEEDED
    with ctx.sessions() as session:
        mine = list(session.scalars(select(Result).where(Result.job_id == job_id)))
        assert session.get(Job, job_id).report.text == text  # type: ignore[union-attr]
        assert session.scalars(select(Study.id)).all() == [study_id]
    assert sorted(r.kind for r in mine) == [ResultKind.GROUNDED_SC, ResultKind.GROUNDED_SR]
    sr = next(r for r in mine if r.kind is ResultKind.GROUNDED_SR)
    assert sr.summary == {
        "sentences": 2,
        "grounded_sentences": 1,
        "report_sop_instance_uid": None,
        "negated": ["Effusion"],
    }
    assert dciodvfy_errors(ctx.store.absolute(sr.relative_path))[0] == []


def test_the_report_sr_made_for_the_tests_is_valid(tmp_path: Path) -> None:
    image = phantom_image("valid")
    errors, output = dciodvfy_errors(save(report_sr(image, REPORT), tmp_path / "report.dcm"))
    assert errors == [], output
