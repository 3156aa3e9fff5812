"""Grounding on real peers: a study arrives with its report, and the report comes back grounded.

One deployment for the module: `radlight dicom-node`, `radlight worker` (real Celery on a private
`tests.peers.run_redis`) and `radlight api` processes over a migrated SQLite database, the tiny
ONNX classifier, and Orthanc as the PACS. Images are the gallery's synthetic phantom; the report
is a Basic Text SR made here (valid per dciodvfy).

- DICOM: storescu sends the image and the report SR; Orthanc ends up holding the grounded-report
  SR (zero dciodvfy errors) and one SC per grounded sentence. A report posted by REST for the
  stored study queues its own job, whose grounded SR reaches Orthanc too.
- Viewer: headless Chromium (Debian's, driven by Playwright) follows a PACS-style link to the
  viewer, signs in, hovers a phrase: the overlay's pixels change inside the phrase's region and
  not elsewhere; Tab moves the focus to the next phrase and lights up its region; a negated
  phrase lights nothing.

Screenshots go to a temporary folder; set RADLIGHT_SCREENSHOTS=docs/viewer to refresh the docs'.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect
from pydicom.dataset import Dataset
from sqlalchemy import Engine, select

from db.config import upsert_destination, upsert_route
from db.migrate import upgrade
from db.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    Result,
    ResultKind,
    Role,
    Study,
    User,
)
from db.session import make_engine, make_session_factory, transaction
from models.export import build_tiny_classifier
from models.registry import ModelRegistry
from services.security import hash_password
from tests.grounding_study import phantom_image, report_sr, save
from tests.integration.browsers import api_answers
from tests.integration.browsers import browser as browser  # a fixture
from tests.peers import (
    Orthanc,
    Service,
    dciodvfy_errors,
    echo_ok,
    free_port,
    node_env,
    radlight_service,
    require_tools,
    run_orthanc,
    run_redis,
    storescu,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER, PASSWORD = "radiologist", "grounding end-to-end test password"
CHANGED = 12  # a pixel changed when a channel moved by more than this (PNG and scaling noise)


@dataclass
class Deployment:
    env: dict[str, str]
    dicom_port: int
    api_url: str
    orthanc: Orthanc
    engine: Engine
    services: list[Service]

    def wait(self, predicate: Any, what: str, timeout: float = 90) -> None:
        def check() -> bool:
            for service in self.services:
                service.assert_alive()
            return bool(predicate())

        try:
            wait_for(check, timeout=timeout, what=what)
        except TimeoutError as exc:
            logs = "\n".join(f"--- {s.name} ---\n{s.log()[-3000:]}" for s in self.services)
            raise AssertionError(f"{exc}\n{logs}") from exc

    def send(self, *datasets: Dataset, folder: Path) -> None:
        files = [save(ds, folder / f"{ds.SOPInstanceUID}.dcm") for ds in datasets]
        sent = storescu(self.dicom_port, *files)
        assert sent.returncode == 0, sent.stdout + sent.stderr

    def token(self) -> str:
        response = httpx.post(
            f"{self.api_url}/api/v1/auth/token",
            data={"username": USER, "password": PASSWORD},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_tools()
    work = tmp_path_factory.mktemp("grounding-e2e")
    data_dir = work / "data"
    database_url = f"sqlite:///{work / 'radlight.db'}"
    dicom_port, api_port = free_port(), free_port()
    with run_redis(work / "redis") as broker, run_orthanc(work / "orthanc") as orthanc:
        env = node_env(
            data_dir, database_url=database_url, broker_url=broker.url, port=dicom_port, quiet_s=1
        ) | {"RADLIGHT_API_HOST": "127.0.0.1", "RADLIGHT_API_PORT": str(api_port)}
        upgrade(database_url)  # in this process: two CLI start-ups fewer
        tiny = build_tiny_classifier(work / "tiny", seed=0)
        ModelRegistry(data_dir / "models").install(tiny.onnx_path, tiny.card)
        engine = make_engine(database_url)
        with transaction(make_session_factory(engine)) as session:
            session.add(
                User(username=USER, password_hash=hash_password(PASSWORD), role=Role.OPERATOR)
            )
            upsert_destination(
                session=session,
                name="pacs",
                host="127.0.0.1",
                port=orthanc.dicom_port,
                ae_title=orthanc.ae_title,
            )
            # The route takes the report SR with the image, so the worker finds it in its inputs.
            upsert_route(
                session=session,
                name="chest",
                model_name=tiny.card.name,
                modalities=["DX", "SR"],
                destination_names=["pacs"],
            )
        with (
            radlight_service(env, work, "dicom-node") as node,
            radlight_service(env, work, "worker", "--concurrency", "1") as worker,
            radlight_service(env, work, "api") as api,
        ):
            deployment = Deployment(
                env,
                dicom_port,
                f"http://127.0.0.1:{api_port}",
                orthanc,
                engine,
                [node, worker, api],
            )
            try:
                deployment.wait(lambda: echo_ok(dicom_port), "the node's C-ECHO", timeout=30)
                deployment.wait(lambda: api_answers(deployment.api_url), "the API", timeout=30)
                yield deployment
            finally:
                engine.dispose()


def _delivered(deployment: Deployment, job_ids: set[int]) -> list[Result] | None:
    """The jobs' results once each was sent to the PACS (None before)."""
    with deployment.engine.connect() as conn:
        states = conn.execute(
            select(Job.state, Delivery.state)
            .join(Result, Result.job_id == Job.id)
            .join(Delivery, Delivery.result_id == Result.id)
            .where(Job.id.in_(job_ids))
        ).all()
    if not states or any(d is not DeliveryState.SENT for _, d in states):
        return None
    with make_session_factory(deployment.engine)() as session:
        return list(session.scalars(select(Result).where(Result.job_id.in_(job_ids))))


def _job_ids(deployment: Deployment, study_uid: str) -> set[int]:
    with deployment.engine.connect() as conn:
        return set(
            conn.execute(
                select(Job.id).join(Study).where(Study.study_instance_uid == study_uid)
            ).scalars()
        )


def _held(orthanc: Orthanc) -> dict[str, str]:
    """SOP Instance UID → Orthanc id of everything Orthanc holds."""
    return {
        orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]: i
        for i in orthanc.get("/instances")
    }


def test_a_study_with_its_report_comes_back_grounded_in_the_pacs(
    deployment: Deployment, tmp_path: Path
) -> None:
    image = phantom_image("e2e")
    report = report_sr(image)
    deployment.send(image, report, folder=tmp_path)
    study_uid = str(image.StudyInstanceUID)

    found: list[Result] = []

    def arrived() -> bool:
        results = _delivered(deployment, _job_ids(deployment, study_uid))
        found[:] = results or []
        return any(r.kind is ResultKind.GROUNDED_SR for r in found)

    deployment.wait(arrived, "the grounded report to reach the PACS")
    held = _held(deployment.orthanc)
    grounded_sr = next(r for r in found if r.kind is ResultKind.GROUNDED_SR)
    scs = [r for r in found if r.kind is ResultKind.GROUNDED_SC]
    assert len(scs) == grounded_sr.summary["grounded_sentences"] == 4
    assert {grounded_sr.sop_instance_uid, *(r.sop_instance_uid for r in scs)} <= set(held)

    # The SR as Orthanc holds it: valid, the report's sentences, references to image and report.
    sr_bytes = deployment.orthanc.get_bytes(f"/instances/{held[grounded_sr.sop_instance_uid]}/file")
    (tmp_path / "grounded-sr.dcm").write_bytes(sr_bytes)
    errors, output = dciodvfy_errors(tmp_path / "grounded-sr.dcm")
    assert errors == [], output
    ds = pydicom.dcmread(BytesIO(sr_bytes))
    assert ds.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert "not for primary diagnosis" in ds.SeriesDescription
    assert "No pneumothorax" in str(ds.ContentSequence)
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert {str(image.SOPInstanceUID), str(report.SOPInstanceUID)} <= referenced

    # The RIS posts a corrected report for the stored study: its own job, its own grounded SR.
    before = _job_ids(deployment, study_uid)
    response = httpx.post(
        f"{deployment.api_url}/api/v1/studies/{study_uid}/report",
        json={"text": "Addendum: small left pleural effusion. No consolidation."},
        headers={"Authorization": f"Bearer {deployment.token()}"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["new_job"] is True
    assert body["queued"] is True
    posted_job = body["job"]["id"]
    assert posted_job not in before

    posted: list[Result] = []

    def posted_arrived() -> bool:
        posted[:] = _delivered(deployment, {posted_job}) or []
        return any(r.kind is ResultKind.GROUNDED_SR for r in posted)

    deployment.wait(posted_arrived, "the posted report's grounded SR to reach the PACS")
    assert sorted(r.kind for r in posted) == [ResultKind.GROUNDED_SC, ResultKind.GROUNDED_SR]
    assert {r.sop_instance_uid for r in posted} <= set(_held(deployment.orthanc))
    sc = next(r for r in posted if r.kind is ResultKind.GROUNDED_SC)
    preview = httpx.get(
        f"{deployment.api_url}/api/v1/results/{sc.id}/preview.png",
        headers={"Authorization": f"Bearer {deployment.token()}"},
        timeout=30,
    )
    assert preview.status_code == 200
    assert Image.open(BytesIO(preview.content)).format == "PNG"


# -- the viewer in a browser ------------------------------------------------------------------


def _pixels(locator: Locator) -> NDArray[np.int16]:
    return np.asarray(Image.open(BytesIO(locator.screenshot())).convert("RGB"), dtype=np.int16)


def _changed(before: NDArray[np.int16], after: NDArray[np.int16]) -> NDArray[np.bool_]:
    assert before.shape == after.shape
    return np.abs(after - before).max(axis=2) > CHANGED  # type: ignore[no-any-return]


def _box_masks(
    phrase: Locator, shape: tuple[int, ...], rows: int, columns: int
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """The phrase's box on the screenshot, and everything well away from it (6% margin)."""
    x, y, w, h = (float(v) for v in (phrase.get_attribute("data-box") or "").split(","))
    sy, sx = shape[0] / rows, shape[1] / columns
    inside = np.zeros(shape[:2], dtype=bool)
    inside[int(y * sy) : int((y + h) * sy), int(x * sx) : int((x + w) * sx)] = True
    margin_y, margin_x = int(0.06 * shape[0]), int(0.06 * shape[1])
    near = np.zeros(shape[:2], dtype=bool)
    near[
        max(0, int(y * sy) - margin_y) : int((y + h) * sy) + margin_y,
        max(0, int(x * sx) - margin_x) : int((x + w) * sx) + margin_x,
    ] = True
    return inside, ~near


def _wait_loaded(image: Locator) -> None:
    """Until the image has decoded (polled from here: the page's CSP forbids eval)."""
    wait_for(
        lambda: bool(image.evaluate("img => img.complete && img.naturalWidth > 0")),
        timeout=15,
        what="an image to load",
    )


def _lights_its_region(
    page: Page, stack: Locator, phrase: Locator, before: NDArray[np.int16]
) -> None:
    overlay = page.locator(f"#{phrase.get_attribute('data-overlay')}")
    expect(overlay).to_be_visible()
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=overlay.element_handle()
    )
    after = _pixels(stack)
    changed = _changed(before, after)
    rows, columns = (int(stack.get_attribute(a) or 0) for a in ("data-rows", "data-columns"))
    inside, away = _box_masks(phrase, after.shape, rows, columns)
    assert changed[inside].mean() > 0.3, f"only {changed[inside].mean():.1%} of the region changed"
    assert changed[away].mean() < 0.002, f"{changed[away].mean():.2%} changed away from it"


def test_the_viewer_lights_up_a_phrase_region_on_hover_and_focus(
    deployment: Deployment, browser: Browser, tmp_path: Path
) -> None:
    image = phantom_image("viewer")
    deployment.send(image, report_sr(image), folder=tmp_path)
    study_uid = str(image.StudyInstanceUID)

    def stored() -> bool:
        with deployment.engine.connect() as conn:
            count = conn.execute(
                select(Instance.id)
                .join(Instance.series)
                .join(Study)
                .where(Study.study_instance_uid == study_uid)
            ).all()
        return len(count) == 2

    deployment.wait(stored, "the study to be stored")
    screenshots = Path(os.environ.get("RADLIGHT_SCREENSHOTS") or tmp_path / "screenshots")
    screenshots.mkdir(parents=True, exist_ok=True)

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    viewer_url = f"{deployment.api_url}/dashboard/viewer/studies/{study_uid}"
    page.goto(viewer_url)  # as a PACS link would: sign in first, then straight to the viewer
    page.get_by_label("Username").fill(USER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(viewer_url)
    expect(page.get_by_role("heading", name="Report viewer")).to_be_visible()
    _wait_loaded(page.locator("#base-image"))

    stack = page.locator("#stack")
    page.mouse.move(1, 1)
    before = _pixels(stack)

    # Hover: "Large right pleural effusion" lights up the image's left (the patient's right).
    effusion = page.locator(".phrase.grounded", has_text="Large right pleural effusion")
    effusion.hover()
    _lights_its_region(page, stack, effusion, before)
    expect(page.locator("#shown")).to_contain_text("Effusion")
    page.screenshot(path=str(screenshots / "viewer.png"))
    assert (screenshots / "viewer.png").stat().st_size < 400_000

    # Away from it, the image is as before.
    page.mouse.move(1, 1)
    expect(page.locator(f"#{effusion.get_attribute('data-overlay')}")).to_be_hidden()
    assert _changed(before, _pixels(stack)).mean() < 0.001

    # Keyboard: focus the phrase, Tab to the next ones; each lights up its own region.
    effusion.focus()
    page.keyboard.press("Tab")
    blunting = page.locator(".phrase", has_text="blunting of the right costophrenic angle")
    expect(blunting).to_be_focused()
    page.keyboard.press("Tab")
    consolidation = page.locator(".phrase", has_text="Consolidation in the left upper zone")
    expect(consolidation).to_be_focused()
    _lights_its_region(page, stack, consolidation, before)
    page.keyboard.press("Escape")

    # A negated phrase is marked as such and lights nothing.
    negated = page.locator(".phrase.negated", has_text="No pneumothorax")
    expect(negated).to_have_attribute(
        "aria-describedby", "what-" + (negated.get_attribute("id") or "")[7:]
    )
    negated.hover()
    expect(page.locator("#shown")).to_contain_text("negated")
    assert _changed(before, _pixels(stack)).mean() < 0.001
    context.close()
