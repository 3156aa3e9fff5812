"""A worker set to fp16 (``RADLIGHT_INFERENCE_PRECISION=fp16``) runs the model's checked fp16
copy, and every result says so; without a copy it runs fp32 (SQLite and PostgreSQL, the tiny
ONNX classifier, the real NIH image received as the node does)."""

from pathlib import Path

import pydicom

from db.models import JobState, ResultKind
from models.export import BuiltModel
from models.precision import make_fp16_copy, prepared_batch
from models.preprocess import prepare_image
from tests.workers.conftest import receive, worker_context
from tests.workers.test_pipeline import get_job, make_job, results_of, sop_uid
from workers.imaging import load_frontal_chest
from workers.pipeline import run_job


def test_a_worker_set_to_fp16_runs_the_copy_and_its_results_name_it(
    tmp_path: Path, database_url: str, tiny_model: BuiltModel, real_dicom_files: list[Path]
) -> None:
    with worker_context(tmp_path, database_url, tiny_model, inference_precision="fp16") as ctx:
        source = real_dicom_files[0]
        first_job = make_job(
            ctx, receive(ctx, source).study_id, [sop_uid(source)], model_name=tiny_model.card.name
        )
        assert run_job(first_job, ctx) is JobState.SUCCEEDED  # no copy yet: fp32
        assert get_job(ctx, first_job).model_sha256 == tiny_model.card.sha256

        entry = ctx.registry.get(tiny_model.card.name)
        display = load_frontal_chest(pydicom.dcmread(source))
        check = make_fp16_copy(
            entry, prepared_batch([prepare_image(display, entry.card.preprocessing).tensor])
        )
        second = real_dicom_files[1]
        job_id = make_job(
            ctx, receive(ctx, second).study_id, [sop_uid(second)], model_name=tiny_model.card.name
        )
        assert run_job(job_id, ctx) is JobState.SUCCEEDED

        job = get_job(ctx, job_id)
        assert (job.model_sha256, job.model_version) == (check.sha256, tiny_model.card.version)
        (report,) = [
            r for r in results_of(ctx) if r.kind is ResultKind.FINDINGS_SR and r.job_id == job_id
        ]
        written = pydicom.dcmread(ctx.store.absolute(report.relative_path))
    versions = text_values(written, "Algorithm Version")
    assert versions == {f"{tiny_model.card.version}+fp16"}
    assert text_values(written, "Algorithm Parameters") == {f"model sha256={check.sha256}"}


def text_values(dataset: pydicom.Dataset, meaning: str) -> set[str]:
    """The text of every content item named ``meaning``, anywhere in the SR's tree."""
    found: set[str] = set()
    for item in dataset.get("ContentSequence", []):
        names = item.get("ConceptNameCodeSequence", [])
        if names and names[0].CodeMeaning == meaning and "TextValue" in item:
            found.add(str(item.TextValue))
        found |= text_values(item, meaning)
    return found
