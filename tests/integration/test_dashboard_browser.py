"""The dashboard in a real browser: headless Chromium (Debian's, driven by Playwright) signs in,
sees a failed delivery with its reason, clicks Retry once the PACS is up, and the result arrives.

Everything is real: `radlight dicom-node`, `radlight worker` (Celery on Redis database 8) and
`radlight api` processes over a migrated SQLite database, an admin made with the CLI, dcmtk's
storescu sending a real NIH chest X-ray, the tiny ONNX classifier, and Orthanc as the PACS, down
at first (nothing listens on its port) and then started on that same port.

Screenshots go to a temporary folder; set RADLIGHT_SCREENSHOTS=docs/dashboard to refresh the ones
in the docs.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import Engine, select

from db.config import upsert_destination, upsert_route
from db.models import Delivery, DeliveryState, Result
from db.session import make_engine, make_session_factory, transaction
from models.export import build_tiny_classifier
from models.registry import ModelRegistry
from tests.integration.browsers import api_answers
from tests.integration.browsers import browser as browser  # a fixture
from tests.peers import (
    Service,
    create_user,
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

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_PASSWORD = "dashboard browser test password"
PACS_AE = "ORTHANC"
MAX_SCREENSHOT_BYTES = 300_000


@dataclass
class Deployment:
    env: dict[str, str]
    dicom_port: int
    api_url: str
    pacs_port: int
    engine: Engine
    services: list[Service]

    def alive(self) -> None:
        for service in self.services:
            service.assert_alive()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.log()[-3000:]}" for s in self.services)

    def delivery_states(self) -> dict[int, DeliveryState]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(Delivery.id, Delivery.state).order_by(Delivery.id)).all()
        return {row.id: row.state for row in rows}

    def wait(self, predicate: object, what: str, timeout: float = 60) -> None:
        def check() -> bool:
            self.alive()
            return bool(predicate())  # type: ignore[operator]

        try:
            wait_for(check, timeout=timeout, what=what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from exc


@pytest.fixture
def deployment(tmp_path: Path, redis_url: str) -> Iterator[Deployment]:
    require_tools()
    broker_url = redis_url
    data_dir = tmp_path / "data"
    database_url = f"sqlite:///{tmp_path / 'radlight.db'}"
    dicom_port, api_port, pacs_port = free_port(), free_port(), free_port()
    env = node_env(
        data_dir, database_url=database_url, broker_url=broker_url, port=dicom_port, quiet_s=1.0
    ) | {
        "RADLIGHT_API_HOST": "127.0.0.1",
        "RADLIGHT_API_PORT": str(api_port),
        "RADLIGHT_DELIVERY_MAX_ATTEMPTS": "1",  # the first failure is final: shown at once
    }
    radlight(env, "db", "upgrade")
    create_user(env, "admin", "admin", ADMIN_PASSWORD)
    tiny = build_tiny_classifier(tmp_path / "tiny", seed=0)
    ModelRegistry(data_dir / "models").install(tiny.onnx_path, tiny.card)
    engine = make_engine(database_url)
    with transaction(make_session_factory(engine)) as session:
        # The PACS is down: nothing listens on its port until the test starts Orthanc there.
        upsert_destination(
            session=session, name="pacs", host="127.0.0.1", port=pacs_port, ae_title=PACS_AE
        )
        upsert_route(
            session=session,
            name="chest",
            model_name=tiny.card.name,
            modalities=["DX"],
            destination_names=["pacs"],
        )
    with (
        radlight_service(env, tmp_path, "dicom-node") as node,
        radlight_service(env, tmp_path, "worker", "--concurrency", "1") as worker,
        radlight_service(env, tmp_path, "api") as api,
    ):
        deployment = Deployment(
            env, dicom_port, f"http://127.0.0.1:{api_port}", pacs_port, engine, [node, worker, api]
        )
        try:
            deployment.wait(lambda: echo_ok(dicom_port), "the node's C-ECHO", timeout=30)
            deployment.wait(lambda: api_answers(deployment.api_url), "the API", timeout=30)
            yield deployment
        finally:
            engine.dispose()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: the docs folder when asked for, else this test's own folder."""
    folder = Path(os.environ.get("RADLIGHT_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shoot(page: Page, folder: Path, name: str, *, full_page: bool = True) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    assert 0 < path.stat().st_size < MAX_SCREENSHOT_BYTES, f"{path} is too large for the docs"


def test_sign_in_see_a_failed_delivery_retry_it_once_the_pacs_is_up(
    deployment: Deployment,
    browser: Browser,
    screenshots: Path,
    real_dicom_files: list[Path],
    tmp_path: Path,
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    dashboard = f"{deployment.api_url}/dashboard"

    # Anonymous: sent to sign in; then sign in as the admin the CLI made.
    page.goto(f"{dashboard}/")
    expect(page).to_have_url(f"{dashboard}/login?next=%2Fdashboard%2F")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    shoot(page, screenshots, "login")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{dashboard}/")
    expect(page.get_by_text("No failed deliveries.")).to_be_visible()
    page.evaluate("window.radlightNotReloaded = true")

    # A real study arrives; every delivery to the PACS that is down fails after its one attempt.
    sent = storescu(deployment.dicom_port, real_dicom_files[0])
    assert sent.returncode == 0, sent.stdout + sent.stderr

    def all_failed() -> bool:
        states = deployment.delivery_states()
        return bool(states) and all(s is DeliveryState.FAILED for s in states.values())

    deployment.wait(all_failed, "every delivery to fail")
    failed = sorted(deployment.delivery_states())

    # The open overview shows each failed delivery with its reason by itself (live refresh).
    table = page.locator("#failed-deliveries-table")
    for delivery_id in failed:
        row = table.locator(f"#delivery-{delivery_id}")
        expect(row).to_contain_text(
            f"no association with {PACS_AE} at 127.0.0.1:{deployment.pacs_port}", timeout=30_000
        )
    expect(page.locator("#failed-deliveries")).to_have_text(str(len(failed)))
    assert page.evaluate("window.radlightNotReloaded") is True
    shoot(page, screenshots, "overview-failed-delivery")

    first = failed[0]
    study_link = table.locator(f"#delivery-{first}").get_by_role("link").get_attribute("href")
    assert study_link is not None

    with run_orthanc(tmp_path / "orthanc", PACS_AE, dicom_port=deployment.pacs_port) as orthanc:
        # Retry one delivery: the browser follows the redirect to the overview and its notice.
        table.locator(f"#delivery-{first}").get_by_role("button", name="Retry").click()
        expect(page.get_by_role("status").first).to_have_text(
            f"Delivery {first} was put back on the queue."
        )
        deployment.wait(
            lambda: deployment.delivery_states()[first] is DeliveryState.SENT, "the retried send"
        )

        # The study page shows that delivery SENT (after a refresh) and the result previews.
        page.goto(deployment.api_url + study_link)
        row = page.locator(f"#delivery-{first}")
        expect(row).to_contain_text("sent")
        expect(page.locator("img[src$='preview.png']").first).to_be_visible()
        shoot(page, screenshots, "study", full_page=False)

        # The rest in one go, until the overview shows every result sent.
        page.goto(f"{dashboard}/")
        assert len(failed) > 1  # a summary SC, a heatmap SC per present finding, an SR
        page.get_by_role("button", name="Retry all failed deliveries").click()
        expect(page.get_by_role("status").first).to_have_text(
            f"{len(failed) - 1} failed deliveries were put back on the queue."
        )
        deployment.wait(
            lambda: all(s is DeliveryState.SENT for s in deployment.delivery_states().values()),
            "every delivery to be sent",
        )
        expect(page.locator("#results-sent")).to_have_text(str(len(failed)), timeout=30_000)
        expect(page.get_by_text("No failed deliveries.")).to_be_visible()
        shoot(page, screenshots, "overview-after-retry")
        with deployment.engine.connect() as conn:
            result_uids = set(conn.execute(select(Result.sop_instance_uid)).scalars())
        held = {
            orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
            for i in orthanc.get("/instances")
        }
    assert held == result_uids  # Orthanc holds exactly the results, each once
    context.close()
