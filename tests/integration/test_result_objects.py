"""Every result kind, end to end on real peers: dcmtk's storescu sends a real chest X-ray to a
`radlight dicom-node` process, a `radlight worker` process on the real Redis runs the model, and
two real Orthancs receive the results: one wants lossless Secondary Captures, the other JPEG
baseline copies. The route asks for a SEG and a GSPS too.

Model: the bundled tiny classifier (`radlight models build tiny`, random weights, seed 0). Its
scores mean nothing, but at the default operating threshold (0.5) it calls several findings
present on this image, so every kind of object is made; the test reads which from the SR and
fails if there are none. Each Orthanc must hold exactly the objects meant for it, each valid per
dciodvfy, cross-referenced among themselves (workers/results/links.py), and Orthanc's own
rendering of a heatmap SC must show colour over the finding's region where the source is grey.
SQLite only: the PostgreSQL path is the walking skeleton's.
"""

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, JPEGBaseline8Bit
from sqlalchemy import Engine, Row, select

from db.models import Delivery, DeliveryState, Destination, Job, Result, ResultKind, SCEncoding
from db.session import make_engine
from tests.peers import (
    Orthanc,
    Service,
    dciodvfy_errors,
    echo_ok,
    free_port,
    node_env,
    radlight,
    radlight_service,
    require_tools,
    run_orthanc,
    storescu,
    wait_for,
)
from workers.results import OVERLAY_SERIES_DESCRIPTION, SUMMARY_SERIES_DESCRIPTION
from workers.results.links import MODALITY_PERFORMED_PROCEDURE_STEP

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-test-classifier"
LOSSLESS, JPEG = "lossless-pacs", "jpeg-pacs"
# A pixel whose channels spread (max - min) this much is coloured; a grey one spreads by ~0.
COLOUR_SPREAD = 20
GREY_SPREAD = 6


@dataclass
class Deployment:
    port: int
    engine: Engine
    orthancs: dict[str, Orthanc]
    node: Service
    worker: Service

    def logs(self) -> str:
        return (
            f"--- node ---\n{self.node.log()[-3000:]}\n--- worker ---\n{self.worker.log()[-3000:]}"
        )


@dataclass(frozen=True)
class Held:
    """One object as a destination holds it: Orthanc's id, the file, and the dataset."""

    orthanc_id: str
    path: Path
    dataset: pydicom.Dataset

    @property
    def kind(self) -> str:
        ds = self.dataset
        if ds.Modality in ("SR", "SEG", "PR"):
            return str(ds.Modality)
        return {OVERLAY_SERIES_DESCRIPTION: "heatmap", SUMMARY_SERIES_DESCRIPTION: "summary"}[
            ds.SeriesDescription
        ]


@pytest.fixture
def deployment(tmp_path: Path, redis_url: str) -> Iterator[Deployment]:
    require_tools()
    broker_url = redis_url
    port = free_port()
    database_url = f"sqlite:///{tmp_path / 'radlight.db'}"
    env = node_env(
        tmp_path / "data", database_url=database_url, broker_url=broker_url, port=port, quiet_s=1
    )
    radlight(env, "db", "upgrade")
    radlight(env, "models", "build", "tiny")
    with contextlib.ExitStack() as stack:
        orthancs = {
            LOSSLESS: stack.enter_context(run_orthanc(tmp_path / LOSSLESS, "LOSSLESS_PACS")),
            JPEG: stack.enter_context(run_orthanc(tmp_path / JPEG, "JPEG_PACS")),
        }
        for name, orthanc in orthancs.items():
            encoding = "jpeg_baseline" if name == JPEG else "lossless"
            radlight(
                env,
                *("destinations", "add", name, "--host", "127.0.0.1"),
                *("--port", str(orthanc.dicom_port), "--ae-title", orthanc.ae_title),
                *("--sc-encoding", encoding),
            )
        radlight(
            env,
            *("routes", "add", "chest", "--model", MODEL, "--modality", "DX"),
            *("--destination", LOSSLESS, "--destination", JPEG, "--seg", "--gsps"),
        )
        node = stack.enter_context(radlight_service(env, tmp_path, "dicom-node"))
        worker = stack.enter_context(
            radlight_service(env, tmp_path, "worker", "--concurrency", "1")
        )
        engine = make_engine(database_url)
        stack.callback(engine.dispose)
        # Ask every process to stop at once; each context then waits for its own (Orthanc takes
        # seconds to shut down, and one after the other would add up).
        processes = [node.process, worker.process, *(o.process for o in orthancs.values())]

        def stop_all() -> None:
            for process in processes:
                if process.poll() is None:
                    process.terminate()

        stack.callback(stop_all)

        def node_answers() -> bool:
            node.assert_alive()
            return echo_ok(port)

        wait_for(node_answers, timeout=30, what="node C-ECHO")
        yield Deployment(port, engine, orthancs, node, worker)


def _sent_per_destination(deployment: Deployment) -> dict[str, int] | None:
    """Deliveries per destination once every one is sent, else None; fails on a failed one."""
    with deployment.engine.connect() as conn:
        rows = conn.execute(
            select(Destination.name, Delivery.state, Delivery.reason).join(
                Destination, Delivery.destination_id == Destination.id
            )
        ).all()
    failed = [(row.name, row.reason) for row in rows if row.state == DeliveryState.FAILED]
    assert not failed, f"deliveries failed: {failed}"
    if not rows or any(row.state != DeliveryState.SENT for row in rows):
        return None
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.name] = counts.get(row.name, 0) + 1
    return counts


def _wait_delivered(deployment: Deployment) -> dict[str, int]:
    def delivered() -> dict[str, int] | None:
        deployment.node.assert_alive()
        deployment.worker.assert_alive()
        counts = _sent_per_destination(deployment)
        if counts is None or set(counts) != set(deployment.orthancs):
            return None
        held = {name: len(o.get("/instances")) for name, o in deployment.orthancs.items()}
        return counts if held == counts else None

    try:
        counts: dict[str, int] = wait_for(delivered, timeout=120, what="deliveries")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{deployment.logs()}") from exc
    return counts


def _held(orthanc: Orthanc, folder: Path) -> dict[str, Held]:
    """Every instance ``orthanc`` holds, downloaded, by SOP Instance UID."""
    folder.mkdir()
    held = {}
    for orthanc_id in orthanc.get("/instances"):
        path = folder / f"{orthanc_id}.dcm"
        path.write_bytes(orthanc.get_bytes(f"/instances/{orthanc_id}/file"))
        dataset = pydicom.dcmread(path)
        held[str(dataset.SOPInstanceUID)] = Held(orthanc_id, path, dataset)
    return held


def _results(deployment: Deployment) -> list[Row[Any]]:
    with deployment.engine.connect() as conn:
        return list(
            conn.execute(
                select(
                    Job.id.label("job_id"),
                    Result.kind,
                    Result.sc_encoding,
                    Result.sop_instance_uid,
                    Result.summary,
                ).join(Job, Result.job_id == Job.id)
            )
        )


def _step(dataset: pydicom.Dataset) -> str:
    (item,) = dataset.ReferencedPerformedProcedureStepSequence
    assert item.ReferencedSOPClassUID == MODALITY_PERFORMED_PROCEDURE_STEP
    return str(item.ReferencedSOPInstanceUID)


def _evidence(report: pydicom.Dataset) -> set[str]:
    return {
        str(item.ReferencedSOPInstanceUID)
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


def _check_cross_references(
    held: dict[str, Held], elsewhere: set[str], source_uid: str, job_id: int
) -> None:
    """From any object the destination holds, a script reaches all the others it holds."""
    (report,) = [h.dataset for h in held.values() if h.kind == "SR"]
    assert report.SOPClassUID == ComprehensiveSRStorage
    report_uid = str(report.SOPInstanceUID)
    # The SR names every other object held here; what it names beyond them is the source (not
    # sent back) and the SCs of the other encoding, which went to the other destination.
    assert _evidence(report) == (set(held) - {report_uid}) | elsewhere | {source_uid}
    assert len({_step(h.dataset) for h in held.values()}) == 1
    for h in held.values():
        if h.kind in ("heatmap", "summary", "SEG"):
            references = {
                str(item.ReferencedSOPInstanceUID): item
                for item in h.dataset.ReferencedInstanceSequence
            }
            assert report_uid in references, f"{h.kind} does not reference the SR held here"
            purpose = references[report_uid].PurposeOfReferenceCodeSequence[0]
            assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("126000", "DCM")
        if h.kind != "SR":
            assert h.dataset.PerformedProcedureStepID == str(job_id)


def _rgb_preview(orthanc: Orthanc, orthanc_id: str) -> NDArray[np.int16]:
    png = orthanc.get_bytes(f"/instances/{orthanc_id}/preview")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def _region_of(gsps: pydicom.Dataset, finding: str) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) the GSPS draws for ``finding``."""
    for annotation in gsps.GraphicAnnotationSequence:
        for graphic in annotation.get("GraphicObjectSequence", []):
            if graphic.get("TrackingID") == finding:
                xs, ys = graphic.GraphicData[0::2], graphic.GraphicData[1::2]
                return int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))
    raise AssertionError(f"the GSPS has no region for {finding}")


def test_every_result_kind_reaches_both_destinations_valid_and_linked(
    deployment: Deployment, real_dicom_files: list[Path], tmp_path: Path
) -> None:
    source_path = real_dicom_files[0]
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    sent = storescu(deployment.port, source_path)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    counts = _wait_delivered(deployment)

    results = _results(deployment)
    (report_row,) = [r for r in results if r.kind is ResultKind.FINDINGS_SR]
    present = report_row.summary["present"][str(source.SOPInstanceUID)]
    assert present, "the model found nothing present: no heatmap, SEG or GSPS to check"
    overlays = min(3, len(present))  # RADLIGHT_OVERLAYS_PER_IMAGE's default
    expected = {"heatmap": overlays, "summary": 1, "SEG": 1, "PR": 1, "SR": 1}
    assert counts == {LOSSLESS: sum(expected.values()), JPEG: sum(expected.values())}

    for name, orthanc in deployment.orthancs.items():
        held = _held(orthanc, tmp_path / f"received-{name}")
        kinds: dict[str, int] = {}
        for h in held.values():
            kinds[h.kind] = kinds.get(h.kind, 0) + 1
            ds = h.dataset
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            syntax = ds.file_meta.TransferSyntaxUID
            if h.kind in ("heatmap", "summary"):
                if name == JPEG:
                    assert syntax == JPEGBaseline8Bit
                    assert ds.LossyImageCompression == "01"
                else:
                    assert syntax == ExplicitVRLittleEndian
                    assert ds.get("LossyImageCompression") in (None, "00")
            else:
                assert syntax == ExplicitVRLittleEndian
            errors, output = dciodvfy_errors(h.path)
            assert errors == [], f"dciodvfy on {h.kind} at {name}:\n{output}"
        assert kinds == expected, name

        encoding = SCEncoding.JPEG_BASELINE if name == JPEG else SCEncoding.LOSSLESS
        elsewhere = {
            r.sop_instance_uid
            for r in results
            if r.sc_encoding is not None and r.sc_encoding is not encoding
        }
        assert not elsewhere & set(held)
        _check_cross_references(held, elsewhere, str(source.SOPInstanceUID), report_row.job_id)

    # Orthanc's own rendering of the top finding's heatmap SC: colour over the finding's region
    # (the GSPS's box for it), where Orthanc renders the source grey.
    orthanc = deployment.orthancs[LOSSLESS]
    held = _held(orthanc, tmp_path / "received-again")
    stored = httpx.post(orthanc.url + "/instances", content=source_path.read_bytes(), timeout=60)
    stored.raise_for_status()
    source_preview = _rgb_preview(orthanc, stored.json()["ID"])
    top = present[0]
    (overlay,) = [
        h
        for h in held.values()
        if h.kind == "heatmap" and h.dataset.ImageComments.startswith(top.replace("_", " "))
    ]
    (gsps,) = [h.dataset for h in held.values() if h.kind == "PR"]
    x0, y0, x1, y1 = _region_of(gsps, top)
    overlay_preview = _rgb_preview(orthanc, overlay.orthanc_id)
    rows, columns = int(source.Rows), int(source.Columns)
    assert overlay_preview.shape[1] == columns
    assert overlay_preview.shape[0] > rows  # the legend band below the source's pixels
    assert source_preview.shape[:2] == (rows, columns)

    def spread(image: NDArray[np.int16]) -> NDArray[np.int16]:
        inside = image[y0:y1, x0:x1]
        result: NDArray[np.int16] = inside.max(axis=2) - inside.min(axis=2)
        return result

    assert int(spread(source_preview).max()) <= GREY_SPREAD
    coloured = float((spread(overlay_preview[:rows]) >= COLOUR_SPREAD).mean())
    assert coloured > 0.5, f"only {coloured:.0%} of the region is coloured in the SC preview"
    difference = np.abs(overlay_preview[:rows] - source_preview)[y0:y1, x0:x1]
    assert float(difference.mean()) > COLOUR_SPREAD / 2
