"""Cross-references between the objects of one job, on a real job: the tiny classifier over both
real NIH chest X-rays (moved into one study) with every result kind switched on.

A script holding any one object must find all the others: the images (SC, SEG) reference the SR,
the SR lists every object as evidence, and every object names the same job step. Each object is
read back strictly and validated with dciodvfy, which must raise no error and no warning about
the attributes the links add.
"""

import datetime
import io
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import (
    ComprehensiveSRStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
)

from db.models import ResultKind, SCEncoding
from models.export import BuiltModel
from models.registry import ModelEntry, ModelRegistry
from radlight.uids import deterministic_uid
from tests.dicom_io import strict_reading, to_bytes
from tests.peers import dciodvfy_errors
from workers.analysis import (
    AnalysedImage,
    BuiltResult,
    JobIdentity,
    ResultOptions,
    algorithm_of,
    analyse,
    not_analysed,
)
from workers.imaging import load_frontal_chest
from workers.results.links import (
    MODALITY_PERFORMED_PROCEDURE_STEP,
    REPORT_PURPOSE,
    JobStep,
    ReportReference,
    link_job_objects,
)

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)
JOB_ID = 4711
# Threshold 0: every finding is present, so every result kind is made (the tiny model's scores
# mean nothing; this test is about the links, not the findings).
OPTIONS = ResultOptions(
    max_overlays_per_image=1,
    default_threshold=0.0,
    segmentation=True,
    presentation_state=True,
    jpeg_copies=True,
)
ADDED = ("(0008,1111)", "(0040,0253)", "(0040,0254)", "(0008,114a)")


@pytest.fixture(scope="module")
def entry(tiny_model: BuiltModel, tmp_path_factory: pytest.TempPathFactory) -> ModelEntry:
    registry = ModelRegistry(tmp_path_factory.mktemp("models"))
    return registry.install(tiny_model.onnx_path, tiny_model.card)


@pytest.fixture(scope="module")
def images(real_dicom_files: list[Path]) -> list[AnalysedImage]:
    first, second = (pydicom.dcmread(path) for path in real_dicom_files)
    second.StudyInstanceUID = first.StudyInstanceUID
    return [AnalysedImage(ds, load_frontal_chest(ds)) for ds in (first, second)]


def identity(images: list[AnalysedImage]) -> JobIdentity:
    return JobIdentity(
        job_id=JOB_ID,
        study_instance_uid=str(images[0].source.StudyInstanceUID),
        input_hash="links-test",
        created_at=WHEN,
    )


@pytest.fixture(scope="module")
def built(entry: ModelEntry, images: list[AnalysedImage]) -> list[BuiltResult]:
    return analyse(identity(images), entry, images, OPTIONS)


@pytest.fixture(scope="module")
def written(built: list[BuiltResult]) -> dict[str, pydicom.Dataset]:
    """Every object of the job as a receiver reads it back (strictly), by SOP Instance UID."""
    objects: dict[str, pydicom.Dataset] = {}
    for result in built:
        with strict_reading():
            dataset = pydicom.dcmread(io.BytesIO(to_bytes(result.dataset)))
            assert [element.value for element in dataset.iterall()]
        objects[str(dataset.SOPInstanceUID)] = dataset
    return objects


def step_uid(dataset: pydicom.Dataset) -> str:
    (item,) = dataset.ReferencedPerformedProcedureStepSequence
    assert item.ReferencedSOPClassUID == MODALITY_PERFORMED_PROCEDURE_STEP
    return str(item.ReferencedSOPInstanceUID)


def explicit_references(dataset: pydicom.Dataset) -> set[str]:
    """The instances ``dataset`` names: its report (0008,114A) and, for an SR, its evidence."""
    uids = {
        str(item.ReferencedSOPInstanceUID) for item in dataset.get("ReferencedInstanceSequence", [])
    }
    for study in dataset.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.ReferencedSeriesSequence:
            uids |= {str(item.ReferencedSOPInstanceUID) for item in series.ReferencedSOPSequence}
    return uids


def reachable(start: str, objects: dict[str, pydicom.Dataset]) -> set[str]:
    """The objects a script reaches from ``start`` by following explicit references."""
    seen, queue = {start}, deque([start])
    while queue:
        for uid in explicit_references(objects[queue.popleft()]):
            if uid in objects and uid not in seen:
                seen.add(uid)
                queue.append(uid)
    return seen


def by_kind(built: Iterable[BuiltResult], kind: ResultKind) -> list[BuiltResult]:
    return [result for result in built if result.kind is kind]


def test_the_job_makes_every_kind(built: list[BuiltResult]) -> None:
    kinds = {(r.kind, r.sc_encoding) for r in built}
    assert kinds == {
        (ResultKind.HEATMAP_SC, SCEncoding.LOSSLESS),
        (ResultKind.HEATMAP_SC, SCEncoding.JPEG_BASELINE),
        (ResultKind.SUMMARY_SC, SCEncoding.LOSSLESS),
        (ResultKind.SUMMARY_SC, SCEncoding.JPEG_BASELINE),
        (ResultKind.PROBABILITY_SEG, None),
        (ResultKind.REGION_GSPS, None),
        (ResultKind.FINDINGS_SR, None),
    }
    assert len(by_kind(built, ResultKind.PROBABILITY_SEG)) == 2  # one per image
    assert len(by_kind(built, ResultKind.REGION_GSPS)) == 2


def test_every_object_names_the_same_job_step(
    built: list[BuiltResult], written: dict[str, pydicom.Dataset], entry: ModelEntry
) -> None:
    steps = {step_uid(dataset) for dataset in written.values()}
    assert len(steps) == 1
    card = entry.card
    (step,) = steps
    assert step == deterministic_uid(
        str(written[next(iter(written))].StudyInstanceUID),
        "links-test",
        card.name,
        card.version,
        "job-step",
    )
    for result in built:
        dataset = written[str(result.dataset.SOPInstanceUID)]
        if result.kind is ResultKind.FINDINGS_SR:
            # The SR IODs have no Performed Procedure Step ID or Description.
            assert "PerformedProcedureStepID" not in dataset
            assert "PerformedProcedureStepDescription" not in dataset
        else:
            assert dataset.PerformedProcedureStepID == str(JOB_ID)
            assert dataset.PerformedProcedureStepDescription == (
                f"RadLight AI job {JOB_ID}: {card.name} {card.version}"
            )


def test_a_script_goes_from_any_object_to_all_others(
    built: list[BuiltResult], written: dict[str, pydicom.Dataset], images: list[AnalysedImage]
) -> None:
    (report,) = by_kind(built, ResultKind.FINDINGS_SR)
    report_uid = str(report.dataset.SOPInstanceUID)
    everything = set(written)
    sources = {str(image.source.SOPInstanceUID) for image in images}
    # The SR lists the sources and every other object of the job, JPEG copies included.
    assert explicit_references(written[report_uid]) == (everything - {report_uid}) | sources

    for uid, dataset in written.items():
        kind = next(r.kind for r in built if r.dataset.SOPInstanceUID == uid)
        if kind in (ResultKind.HEATMAP_SC, ResultKind.SUMMARY_SC, ResultKind.PROBABILITY_SEG):
            (link,) = [
                item
                for item in dataset.ReferencedInstanceSequence
                if item.ReferencedSOPInstanceUID == report_uid
            ]
            assert link.ReferencedSOPClassUID == ComprehensiveSRStorage
            (purpose,) = link.PurposeOfReferenceCodeSequence
            assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("126000", "DCM")
            # The purpose names the report by its own title.
            title = written[report_uid].ConceptNameCodeSequence[0]
            assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == (
                title.CodeValue,
                title.CodingSchemeDesignator,
            )
            assert reachable(uid, written) == everything
        elif kind is ResultKind.REGION_GSPS:
            # No attribute of a presentation state may name the SR: the shared step links it.
            assert "ReferencedInstanceSequence" not in dataset
            same_step = {u for u, d in written.items() if step_uid(d) == step_uid(dataset)}
            assert same_step == everything
            assert uid in explicit_references(written[report_uid])
        else:
            assert reachable(uid, written) == everything


def test_links_add_no_dciodvfy_error_or_warning(built: list[BuiltResult], tmp_path: Path) -> None:
    checked = set()
    for number, result in enumerate(built):
        if (result.kind, result.sc_encoding) in checked and result.kind is ResultKind.HEATMAP_SC:
            continue  # the other heatmap SCs are built the same way
        checked.add((result.kind, result.sc_encoding))
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(to_bytes(result.dataset))
        errors, output = dciodvfy_errors(path)
        assert errors == [], f"dciodvfy on {result.kind}:\n{output}"
        about_links = [
            line
            for line in output.splitlines()
            if line.startswith("Warning") and any(tag in line.lower() for tag in ADDED)
        ]
        assert about_links == [], f"dciodvfy on {result.kind}:\n{output}"
        assert "not present in standard DICOM IOD" not in output


def test_linked_objects_still_read_in_highdicom(written: dict[str, pydicom.Dataset]) -> None:
    for dataset in written.values():
        if dataset.SOPClassUID == ComprehensiveSRStorage:
            report = hd.sr.srread(io.BytesIO(to_bytes(dataset)))
            assert report.ReferencedPerformedProcedureStepSequence[0].ReferencedSOPInstanceUID
        elif dataset.Modality == "SEG":
            seg = hd.seg.segread(io.BytesIO(to_bytes(dataset)))
            assert seg.number_of_segments == 14
        elif dataset.SOPClassUID == SecondaryCaptureImageStorage:
            assert dataset.SourceImageSequence[0].ReferencedSOPInstanceUID  # untouched


def test_a_rerun_gives_the_same_bytes(
    built: list[BuiltResult], entry: ModelEntry, images: list[AnalysedImage]
) -> None:
    again = analyse(identity(images), entry, images, OPTIONS)
    assert [to_bytes(r.dataset) for r in again] == [to_bytes(r.dataset) for r in built]


def test_not_analysed_report_names_its_job_step(
    built: list[BuiltResult], entry: ModelEntry, images: list[AnalysedImage]
) -> None:
    source = images[0].source
    job = identity(images)
    (result,) = not_analysed(
        job, algorithm_of(entry), [source], {str(source.SOPInstanceUID): "lateral view"}
    )
    (report,) = by_kind(built, ResultKind.FINDINGS_SR)
    assert step_uid(result.dataset) == step_uid(report.dataset)
    assert "PerformedProcedureStepID" not in result.dataset


def test_linking_twice_replaces_rather_than_repeats(built: list[BuiltResult]) -> None:
    (summary, *_) = by_kind(built, ResultKind.SUMMARY_SC)
    (report,) = by_kind(built, ResultKind.FINDINGS_SR)
    dataset = pydicom.dcmread(io.BytesIO(to_bytes(summary.dataset)))
    before = to_bytes(dataset)
    step = JobStep(
        uid=step_uid(dataset),
        step_id=str(dataset.PerformedProcedureStepID),
        description=str(dataset.PerformedProcedureStepDescription),
    )
    link_job_objects(
        [dataset], step, ReportReference(ComprehensiveSRStorage, report.dataset.SOPInstanceUID)
    )
    assert to_bytes(dataset) == before
    assert len(dataset.ReferencedInstanceSequence) == 1
    assert dataset.ReferencedInstanceSequence[0].PurposeOfReferenceCodeSequence[0] == REPORT_PURPOSE


def test_refusals(built: list[BuiltResult], images: list[AnalysedImage]) -> None:
    step = JobStep(uid="2.25.1", step_id="1", description="job")
    with pytest.raises(ValueError, match="not a valid DICOM UID"):
        JobStep(uid="1.02", step_id="1", description="job")
    with pytest.raises(ValueError, match="at most 16"):
        JobStep(uid="2.25.1", step_id="x" * 17, description="job")
    with pytest.raises(ValueError, match="backslash"):
        JobStep(uid="2.25.1", step_id="1", description="a\\b")
    dx = pydicom.Dataset()
    dx.SOPClassUID = DigitalXRayImageStorageForPresentation
    dx.StudyInstanceUID = images[0].source.StudyInstanceUID
    with pytest.raises(ValueError, match="SOP class"):
        link_job_objects([dx], step)  # a DX image is no result of ours
    other = pydicom.dcmread(io.BytesIO(to_bytes(built[0].dataset)))
    other.StudyInstanceUID = deterministic_uid("another study")
    with pytest.raises(ValueError, match="one study"):
        link_job_objects([built[-1].dataset, other], step)
    with pytest.raises(TypeError):
        link_job_objects(built[-1].dataset, step)  # type: ignore[arg-type]
