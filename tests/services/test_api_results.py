"""Results over the API on SQLite and PostgreSQL, on objects the real pipeline made: the tiny ONNX
classifier run over a real NIH chest X-ray, with SEG, GSPS and JPEG copies switched on. Metadata,
the DICOM file as stored, PNG previews of the images, refusals for paths leading out of the store,
and an audit row for every read."""

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.config import upsert_destination, upsert_route
from db.jobs import create_job_if_new
from db.models import JobState, Result, ResultKind, Role
from db.session import transaction
from models.export import BuiltModel, build_tiny_classifier
from radlight.settings import Settings
from tests.services.seed import assert_read_by, assert_refused, audit_events, seed
from tests.workers.conftest import receive
from workers.context import WorkerContext, build_context
from workers.pipeline import run_job

RESULTS = "/api/v1/results"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> list[BuiltModel]:
    return [build_tiny_classifier(tmp_path_factory.mktemp(f"tiny{s}"), seed=s) for s in (0, 1)]


@pytest.fixture
def worker(app_settings: Settings, tiny_models: list[BuiltModel]) -> Iterator[WorkerContext]:
    """A worker context on the API's own database, store and models folder."""
    ctx = build_context(app_settings)
    for model in tiny_models:
        ctx.registry.install(model.onnx_path, model.card)
    try:
        yield ctx
    finally:
        ctx.producer.close()
        ctx.engine.dispose()


def run_pipeline(ctx: WorkerContext, source: Path, model: BuiltModel) -> int:
    """Receive ``source`` as the node does, route it (SEG, GSPS, a JPEG destination) and run the
    job in-process; returns the job id."""
    outcome = receive(ctx, source)
    with transaction(ctx.sessions) as session:
        upsert_destination(session=session, name="pacs", host="127.0.0.1", port=1, ae_title="P")
        upsert_destination(
            session=session,
            name="jpeg",
            host="127.0.0.1",
            port=2,
            ae_title="J",
            sc_encoding="jpeg_baseline",
        )
        route = upsert_route(
            session=session,
            name="chest",
            model_name=model.card.name,
            model_version=model.card.version,
            destination_names=["pacs", "jpeg"],
            produce_seg=True,
            produce_gsps=True,
        )
        sop_uid = str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
        job = create_job_if_new(
            session=session, study_id=outcome.study_id, route=route, sop_instance_uids=[sop_uid]
        )
        assert job is not None
        session.flush()
        job_id = job.id
    assert run_job(job_id, ctx) is JobState.SUCCEEDED
    return job_id


def results_by_kind(sessions: sessionmaker[Session], job_id: int) -> dict[ResultKind, list[Result]]:
    found: dict[ResultKind, list[Result]] = {}
    with sessions() as session:
        for result in session.scalars(
            select(Result).where(Result.job_id == job_id).order_by(Result.id)
        ):
            found.setdefault(result.kind, []).append(result)
    return found


def uids(found: dict[ResultKind, list[Result]]) -> dict[ResultKind, list[str]]:
    return {kind: [r.sop_instance_uid for r in results] for kind, results in found.items()}


@pytest.fixture
def made(
    worker: WorkerContext, tiny_models: list[BuiltModel], real_dicom_files: list[Path]
) -> dict[ResultKind, list[Result]]:
    job_id = run_pipeline(worker, real_dicom_files[0], tiny_models[0])
    return results_by_kind(worker.sessions, job_id)


def png(response_content: bytes) -> Image.Image:
    image = Image.open(BytesIO(response_content))
    assert image.format == "PNG"
    return image


def test_result_routes_admit_roles(
    client: TestClient,
    role_headers: dict[Role, dict[str, str]],
    made: dict[ResultKind, list[Result]],
) -> None:
    summary = made[ResultKind.SUMMARY_SC][0]
    paths = [f"{RESULTS}/{summary.id}{suffix}" for suffix in ("", "/dicom", "/preview.png")]
    assert_read_by(client, role_headers, Role.VIEWER, *paths)


def test_metadata_file_and_previews_of_every_kind(
    client: TestClient,
    app_settings: Settings,
    sessions: sessionmaker[Session],
    viewer: dict[str, str],
    made: dict[ResultKind, list[Result]],
) -> None:
    assert {
        ResultKind.SUMMARY_SC,
        ResultKind.FINDINGS_SR,
        ResultKind.PROBABILITY_SEG,
        ResultKind.REGION_GSPS,
    } <= set(made)
    # Each summary SC comes lossless and as a JPEG baseline copy for the "jpeg" destination.
    assert sorted(r.sc_encoding or "" for r in made[ResultKind.SUMMARY_SC]) == [
        "jpeg_baseline",
        "lossless",
    ]
    everything = [r for results in made.values() for r in results]
    for result in everything:
        meta = client.get(f"{RESULTS}/{result.id}", headers=viewer).json()
        assert (meta["kind"], meta["sop_instance_uid"]) == (result.kind, result.sop_instance_uid)
        assert meta["job_id"] == result.job_id
        assert meta["dicom_url"] == f"{RESULTS}/{result.id}/dicom"
        assert "not for primary diagnosis" in meta["notice"].lower()

        download = client.get(meta["dicom_url"], headers=viewer)
        assert download.status_code == 200
        assert download.headers["content-type"] == "application/dicom"
        assert f'{result.sop_instance_uid}.dcm"' in download.headers["content-disposition"]
        stored = (app_settings.store_dir / result.relative_path).read_bytes()
        assert download.content == stored
        ds = pydicom.dcmread(BytesIO(download.content))
        assert ds.SOPInstanceUID == result.sop_instance_uid

        if result.kind in (ResultKind.FINDINGS_SR, ResultKind.REGION_GSPS):
            assert meta["preview_url"] is None
            refused = client.get(f"{RESULTS}/{result.id}/preview.png", headers=viewer)
            assert refused.status_code == 404
            assert refused.json()["detail"] == (
                f"result {result.id} is a {result.kind.value}: it has no pixel data to preview; "
                "download the DICOM object instead"
            )
            continue
        assert meta["preview_url"] == f"{RESULTS}/{result.id}/preview.png"
        preview = client.get(meta["preview_url"], params={"max_size": 4096}, headers=viewer)
        assert preview.status_code == 200, preview.text
        assert preview.headers["content-type"] == "image/png"
        image = png(preview.content)
        pixels = np.asarray(image)
        if result.kind is ResultKind.PROBABILITY_SEG:
            # The highest probability of any segment, scaled to 0-255.
            frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
            expected = np.round(frames.max(axis=0) / float(ds.MaximumFractionalValue) * 255)
            assert image.mode == "L"
            assert np.array_equal(pixels, expected.astype(np.uint8))
            assert pixels.max() > 0
        elif result.sc_encoding == "lossless":
            assert image.mode == "RGB"
            assert np.array_equal(pixels, ds.pixel_array)  # the overlay as it is
        else:  # a JPEG baseline copy, decoded to RGB
            assert image.mode == "RGB"
            assert pixels.shape == (ds.Rows, ds.Columns, 3)
        small = png(
            client.get(meta["preview_url"], params={"max_size": 128}, headers=viewer).content
        )
        assert max(small.size) == 128

    previews = [
        r for r in everything if r.kind not in (ResultKind.FINDINGS_SR, ResultKind.REGION_GSPS)
    ]
    assert len(audit_events(sessions, "result.read")) == len(everything)
    assert len(audit_events(sessions, "result.download")) == len(everything)
    assert len(audit_events(sessions, "result.preview")) == 2 * len(previews)
    (first, *_) = audit_events(sessions, "result.download")
    assert (first.actor, first.target_type) == ("user:viewer", "result")
    assert first.detail["sop_instance_uid"] == everything[0].sop_instance_uid


def test_reprocessed_results_land_in_new_series_beside_the_old(
    client: TestClient,
    worker: WorkerContext,
    tiny_models: list[BuiltModel],
    real_dicom_files: list[Path],
    role_headers: dict[Role, dict[str, str]],
) -> None:
    old_job = run_pipeline(worker, real_dicom_files[0], tiny_models[0])
    before = results_by_kind(worker.sessions, old_job)
    new_version = tiny_models[1].card.version
    response = client.post(
        f"/api/v1/jobs/{old_job}/reprocess",
        json={"model_version": new_version},
        headers=role_headers[Role.OPERATOR],
    )
    assert response.status_code == 202, response.text
    new_job = response.json()["job"]["id"]

    assert run_job(new_job, worker) is JobState.SUCCEEDED

    after = results_by_kind(worker.sessions, new_job)
    assert set(after) == set(before)
    old_series = {r.series_instance_uid for rs in before.values() for r in rs}
    new_series = {r.series_instance_uid for rs in after.values() for r in rs}
    assert old_series.isdisjoint(new_series)
    assert {r.model_version for rs in after.values() for r in rs} == {new_version}
    # The old job's results are still there, unchanged.
    assert uids(results_by_kind(worker.sessions, old_job)) == uids(before)


@pytest.mark.parametrize(
    ("relative_path", "detail"),
    [
        ("../secret_key", "recorded path leads outside the store; refusing it"),
        ("../../../../../../etc/passwd", "recorded path leads outside the store; refusing it"),
        ("/etc/passwd", "recorded path leads outside the store; refusing it"),
        ("results/../../radlight.db", "recorded path leads outside the store; refusing it"),
        ("results/nowhere.dcm", "file is missing from the store"),
        ("results", "file is missing from the store"),
    ],
)
def test_paths_leading_out_of_the_store_are_refused(
    client: TestClient,
    app_settings: Settings,
    sessions: sessionmaker[Session],
    viewer: dict[str, str],
    relative_path: str,
    detail: str,
) -> None:
    (app_settings.store_dir / "results").mkdir(parents=True, exist_ok=True)
    s = seed(sessions, relative_path=relative_path)
    for suffix in ("/dicom", "/preview.png"):
        assert_refused(
            client,
            viewer,
            "GET",
            f"{RESULTS}/{s.result_id}{suffix}",
            404,
            f"result {s.result_id}'s {detail}",
        )
    assert audit_events(sessions, "result.download") == []


def test_an_undecodable_file_gets_a_404_that_says_so(
    client: TestClient,
    app_settings: Settings,
    sessions: sessionmaker[Session],
    viewer: dict[str, str],
) -> None:
    broken = app_settings.store_dir / "results" / "broken.dcm"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a DICOM file at all")
    s = seed(sessions, relative_path="results/broken.dcm")
    response = client.get(f"{RESULTS}/{s.result_id}/preview.png", headers=viewer)
    assert response.status_code == 404
    assert response.json()["detail"].startswith(
        f"result {s.result_id}: the stored object's pixels cannot be decoded"
    )
    # The bytes themselves are still served as stored.
    assert (
        client.get(f"{RESULTS}/{s.result_id}/dicom", headers=viewer).content == broken.read_bytes()
    )


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        (f"{RESULTS}/0", 422, None),
        (f"{RESULTS}/-1/dicom", 422, None),
        (f"{RESULTS}/abc/preview.png", 422, None),
        (f"{RESULTS}/..%2F..%2Fetc%2Fpasswd/dicom", 404, None),
        (f"{RESULTS}/99999999999999999999/dicom", 422, None),
        (f"{RESULTS}/424242", 404, "no result 424242"),
        (f"{RESULTS}/424242/dicom", 404, "no result 424242"),
        (f"{RESULTS}/424242/preview.png", 404, "no result 424242"),
        (f"{RESULTS}/1/preview.png?max_size=10", 422, None),
        (f"{RESULTS}/1/preview.png?max_size=100000", 422, None),
    ],
)
def test_hostile_result_requests_get_a_4xx_with_a_message(
    client: TestClient,
    sessions: sessionmaker[Session],
    viewer: dict[str, str],
    path: str,
    status: int,
    detail: str | None,
) -> None:
    seed(sessions)
    assert_refused(client, viewer, "GET", path, status, detail)
