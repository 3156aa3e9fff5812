"""Patient age from DICOM, and an age-restricted model in the pipeline (the pediatric demo's card on
a tiny probabilities-heatmap/1 model, so no build is needed): children analysed, adults and
unknown ages "not analysed" with the reason.
"""

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from db.models import JobState, Result, ResultKind
from dicom_node.patient_age import PatientAge, patient_age
from models.export import BuiltModel
from radlight.errors import NotAnalysableError
from tests.pneumonia_build import build_tiny_heatmap_model
from tests.workers.conftest import copy_with_new_uids, receive
from tests.workers.test_pipeline import get_job, make_job, sop_uid
from workers.context import WorkerContext
from workers.imaging import check_age_range
from workers.pipeline import run_job

# pydicom warns about the non-conformant AS and DA values these tests use on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR AS"),
    pytest.mark.filterwarnings("ignore:Invalid value for VR DA"),
]


def dataset(**values: str) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("003Y", PatientAge(3, "3 y")),
        ("058Y", PatientAge(58, "58 y")),
        ("58", PatientAge(58, "58 y")),  # not valid AS, found in real files: years
        ("018M", PatientAge(1, "18 months")),
        ("011M", PatientAge(0, "11 months")),
        ("012M", PatientAge(1, "12 months")),
        ("052W", PatientAge(0, "52 weeks")),
        ("053W", PatientAge(1, "53 weeks")),
        ("400D", PatientAge(1, "400 days")),
        ("005y", PatientAge(5, "5 y")),
    ],
)
def test_patient_age_string(value: str, expected: PatientAge) -> None:
    assert patient_age(dataset(PatientAge=value)) == expected


@pytest.mark.parametrize("value", ["", "abc", "12X", "-3Y", "200", "1234Y"])
def test_unreadable_age_strings_are_unknown(value: str) -> None:
    assert patient_age(dataset(PatientAge=value)) is None


def test_age_from_birth_and_study_dates() -> None:
    # The day before the 3rd birthday is 2 completed years; the birthday itself is 3.
    assert patient_age(dataset(PatientBirthDate="20180615", StudyDate="20210614")) == PatientAge(
        2, "2 y"
    )
    assert patient_age(dataset(PatientBirthDate="20180615", StudyDate="20210615")) == PatientAge(
        3, "3 y"
    )
    leap = patient_age(dataset(PatientBirthDate="20200229", SeriesDate="20210228"))
    assert leap == PatientAge(0, "0 y")
    # PatientAge wins over dates; broken or missing dates leave the age unknown.
    both = dataset(PatientAge="004Y", PatientBirthDate="19600101", StudyDate="20200101")
    assert patient_age(both) == PatientAge(4, "4 y")
    assert patient_age(dataset(PatientBirthDate="20181301", StudyDate="20210101")) is None
    assert patient_age(dataset(PatientBirthDate="20210101", StudyDate="20180101")) is None
    assert patient_age(dataset(PatientBirthDate="20180101")) is None


def test_age_range_check_gives_the_reason() -> None:
    check_age_range(dataset(PatientAge="58"), None)  # no range: anyone
    check_age_range(dataset(PatientAge="001Y"), (1, 5))
    check_age_range(dataset(PatientAge="005Y"), (1, 5))
    with pytest.raises(NotAnalysableError) as adult:
        check_age_range(dataset(PatientAge="58"), (1, 5), "pediatric demo model")
    assert str(adult.value) == (
        "patient age 58 y is outside this model's range 1\u20135 y (pediatric demo model)"
    )
    with pytest.raises(NotAnalysableError, match="patient age 6 y is outside"):
        check_age_range(dataset(PatientAge="006Y"), (1, 5))
    with pytest.raises(NotAnalysableError, match="patient age 11 months is outside"):
        check_age_range(dataset(PatientAge="011M"), (1, 5))
    with pytest.raises(NotAnalysableError, match="patient age is unknown"):
        check_age_range(dataset(), (1, 5), "pediatric demo model")


@pytest.fixture(scope="module")
def tiny_heatmap(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    return build_tiny_heatmap_model(tmp_path_factory.mktemp("tiny-heatmap"))


@pytest.fixture
def pediatric_ctx(ctx: WorkerContext, tiny_heatmap: BuiltModel) -> WorkerContext:
    ctx.registry.install(tiny_heatmap.onnx_path, tiny_heatmap.card)
    return ctx


def test_age_restricted_model_analyses_children_only(
    pediatric_ctx: WorkerContext, tiny_heatmap: BuiltModel, real_dicom_files: list[Path]
) -> None:
    ctx, name = pediatric_ctx, tiny_heatmap.card.name
    study = pydicom.uid.generate_uid()
    child = copy_with_new_uids(real_dicom_files[0], study_uid=study, PatientAge="003Y")
    adult = copy_with_new_uids(real_dicom_files[1], study_uid=study)  # PatientAge "81"
    unknown = copy_with_new_uids(real_dicom_files[0], study_uid=study, PatientAge=None)
    outcome = receive(ctx, child)
    receive(ctx, adult)
    receive(ctx, unknown)
    uids = [sop_uid(child), sop_uid(adult), sop_uid(unknown)]
    job_id = make_job(ctx, outcome.study_id, uids, model_name=name)

    assert run_job(job_id, ctx) is JobState.SUCCEEDED

    job = get_job(ctx, job_id)
    assert job.reason is not None
    assert (
        f"{sop_uid(adult)}: patient age 81 y is outside this model's range 1\u20135 y "
        "(pediatric demo model)"
    ) in job.reason
    assert f"{sop_uid(unknown)}: patient age is unknown" in job.reason
    with ctx.sessions() as session:
        results = list(session.scalars(select(Result)))
    kinds = {r.kind for r in results}
    assert ResultKind.FINDINGS_SR in kinds
    assert ResultKind.SUMMARY_SC in kinds
    for sc in [r for r in results if r.kind in (ResultKind.HEATMAP_SC, ResultKind.SUMMARY_SC)]:
        assert sc.source_sop_instance_uid == sop_uid(child)
    for sc in [r for r in results if r.kind is ResultKind.HEATMAP_SC]:
        assert sc.summary["finding"] == "Pneumonia"
    (sr,) = [r for r in results if r.kind is ResultKind.FINDINGS_SR]
    findings = sr.summary["findings"]
    assert isinstance(findings, dict)
    assert list(findings) == [sop_uid(child)]
    assert 0.0 < findings[sop_uid(child)]["Pneumonia"] < 1.0


def test_adult_study_is_not_analysed_by_the_pediatric_model(
    pediatric_ctx: WorkerContext, tiny_heatmap: BuiltModel, real_dicom_files: list[Path]
) -> None:
    ctx = pediatric_ctx
    adult = copy_with_new_uids(real_dicom_files[0])  # PatientAge "58"
    outcome = receive(ctx, adult)
    job_id = make_job(ctx, outcome.study_id, [sop_uid(adult)], model_name=tiny_heatmap.card.name)

    assert run_job(job_id, ctx) is JobState.NOT_ANALYSED

    job = get_job(ctx, job_id)
    assert job.reason == (
        f"not analysed: {sop_uid(adult)}: patient age 58 y is outside this model's range "
        "1\u20135 y (pediatric demo model)"
    )
