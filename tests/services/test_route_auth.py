"""Every HTTP route refuses an anonymous caller, except a short, explicit list (docs/SECURITY.md).

The routes are read from the app itself, so a route added later without authentication fails
this test until it is either protected or added to PUBLIC with a reason.
"""

import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from db.migrate import upgrade

# (method, path) -> why it is open to anyone.
PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/health"): "liveness probe; says only that the process answers",
    ("GET", "/ready"): "readiness probe; says only whether the database and schema are ready",
    ("GET", "/openapi.json"): "the API's description; no data",
    ("GET", "/docs"): "the API's documentation page; no data",
    ("GET", "/docs/oauth2-redirect"): "part of the documentation page's sign-in",
    ("GET", "/redoc"): "the API's documentation page; no data",
    ("POST", "/api/v1/auth/token"): "signing in (limited per username and address)",
    ("GET", "/dashboard/login"): "the sign-in form",
    ("POST", "/dashboard/login"): "signing in (same limits as the API)",
    ("GET", "/dashboard/static/{name}"): "our own CSS and JavaScript files",
}
SAMPLE_PARAMS = {"study_instance_uid": "1.2.3.4", "name": "dashboard.css"}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: authentication does not depend on the backend (test_auth covers both)."""
    url = f"sqlite:///{tmp_path / 'radlight.db'}"
    upgrade(url)
    return url


def routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path template) of every route, including those of included routers."""
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        for item in contexts() if contexts is not None else [route]:
            for method in sorted(getattr(item, "methods", None) or []):
                if method != "HEAD":
                    yield method, str(getattr(item, "path", ""))


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: SAMPLE_PARAMS.get(m[1], "1"), path)


def refused(response: httpx2.Response) -> bool:
    """401 for the API; for dashboard pages, the redirect to the sign-in page."""
    location = response.headers.get("location", "")
    return response.status_code == 401 or (
        response.status_code == 303 and location.startswith("/dashboard/login")
    )


def test_the_walk_finds_the_routes_we_know(client: TestClient) -> None:
    found = set(routes(client.app))  # type: ignore[arg-type]
    assert len(found) > 50
    assert set(PUBLIC) <= found, set(PUBLIC) - found
    assert ("GET", "/api/v1/studies") in found
    assert ("POST", "/dashboard/jobs/{job_id}/retry") in found


@pytest.mark.parametrize(
    "credentials",
    [{}, {"Authorization": "Bearer not-a-token"}, {"X-API-Key": "rlk_0123_notakey"}],
    ids=["anonymous", "bad-bearer", "bad-api-key"],
)
def test_every_route_but_the_public_ones_refuses_callers_without_valid_credentials(
    client: TestClient, credentials: dict[str, str]
) -> None:
    open_routes = []
    for method, path in routes(client.app):  # type: ignore[arg-type]
        if (method, path) in PUBLIC:
            continue
        response = client.request(
            method, concrete(path), headers=credentials, follow_redirects=False
        )
        if not refused(response):
            open_routes.append(f"{method} {path} -> {response.status_code}")
    assert open_routes == []


def test_the_public_routes_really_answer_anonymous_callers(client: TestClient) -> None:
    for method, path in PUBLIC:
        if method != "GET":
            continue
        response = client.get(concrete(path), follow_redirects=False)
        assert response.status_code in (200, 404, 503), f"{path}: {response.status_code}"
        assert not refused(response), path
