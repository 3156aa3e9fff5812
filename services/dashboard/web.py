"""How every dashboard page answers: Jinja2 templates, HTML errors, and strict security headers.

Pages raise ``LoginRequired`` or ``PageError`` (from dependencies or handlers); the dashboard's
route class turns them into a redirect to the sign-in page or an HTML error page, so a browser
never sees the API's JSON errors. Every response gets a Content-Security-Policy that allows only
our own script and style files, and is never cached (pages hold patient-level identifiers).
"""

from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse

from radlight import NOT_FOR_PRIMARY_DIAGNOSIS, __version__
from services.dashboard import describe

PREFIX = "/dashboard"
LOGIN_PATH = f"{PREFIX}/login"
HERE = Path(__file__).resolve().parent


def when(value: datetime | None) -> str:
    """Times are shown in UTC, as stored, to the second."""
    if value is None:
        return "\u2014"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def took(start: datetime | None, end: datetime | None) -> str:
    """The time between two steps, or a dash when either has not happened."""
    if start is None or end is None:
        return "\u2014"
    seconds = (end - start).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(
    version=__version__, notice_text=NOT_FOR_PRIMARY_DIAGNOSIS, prefix=PREFIX
)
templates.env.globals.update(
    headline=describe.headline, scores=describe.scores, previewable=describe.previewable
)
templates.env.filters["when"] = when
templates.env.filters["took"] = took

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


# What a page says after an action; a redirect carries only the key and a number, never text.
NOTICES = {
    "job-retried": "Job {id} was put back on the queue.",
    "job-waiting": "Job {id} will be queued as soon as the broker answers.",
    "job-cancelled": "Job {id} was cancelled.",
    "delivery-retried": "Delivery {id} was put back on the queue.",
    "delivery-waiting": "Delivery {id} will be queued as soon as the broker answers.",
    "deliveries-retried": "{id} failed deliveries were put back on the queue.",
    "destination-saved": "Destination {id} was saved; the next delivery uses it.",
    "route-saved": "Route {id} was saved; the next study that falls quiet follows it.",
}


def notice_for(request: Request) -> str | None:
    """The fixed message named by the page's ``notice`` query parameter, if any."""
    template = NOTICES.get(request.query_params.get("notice", ""))
    ident = request.query_params.get("id", "")
    if template is None or not ident.isdigit() or len(ident) > 19:
        return None
    return template.format(id=ident)


class LoginRequired(Exception):  # noqa: N818 - a signal, not an error
    """No valid session: the browser is sent to the sign-in page."""


class PageError(Exception):
    """A refusal or a missing thing, shown as an HTML page with this status."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def login_url(request: Request) -> str:
    """The sign-in page, with a way back to the page asked for (a local path only)."""
    if request.method != "GET" or request.url.path == LOGIN_PATH:
        return LOGIN_PATH
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"{LOGIN_PATH}?{urlencode({'next': target})}"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path inside the dashboard, never another site."""
    if (
        target
        and target.startswith(PREFIX + "/")
        and not target.startswith("//")
        and "\\" not in target
        and not any(ord(c) < 32 for c in target)
    ):
        return target
    return PREFIX + "/"


def render(
    request: Request,
    name: str,
    user: object,
    context: Mapping[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    """A page for a signed-in ``user`` (a ``WebUser``: the nav and forms need its role and token)."""
    return templates.TemplateResponse(
        request,
        name,
        {"user": user, "notice": notice_for(request), **(context or {})},
        status_code,
    )


def error_page(request: Request, status_code: int, message: str) -> Response:
    return templates.TemplateResponse(
        request, "error.html", {"status_code": status_code, "message": message}, status_code
    )


class DashboardRoute(APIRoute):
    """An APIRoute whose refusals are HTML and whose responses carry the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                response = RedirectResponse(login_url(request), status_code=303)
            except PageError as exc:
                response = error_page(request, exc.status_code, exc.message)
            except HTTPException as exc:
                response = error_page(request, exc.status_code, str(exc.detail))
            except RequestValidationError as exc:
                response = error_page(request, 422, _invalid_input(exc))
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return handle


def _invalid_input(exc: RequestValidationError) -> str:
    """Which fields were wrong and why, without echoing the values sent."""
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "input"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "Invalid input. " + "; ".join(problems)
