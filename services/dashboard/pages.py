"""The dashboard's read pages: overview (live), studies, one study, the audit trail.

Each page needs the same role as the API's matching read, and reads of patient-level data
(studies, a study, result previews) are audited like the API's.
"""

from collections.abc import Callable
from datetime import date
from typing import Annotated, TypeVar

from fastapi import APIRouter, Path, Query, Request, Response

from db.models import StudyState
from services import audit
from services.api import audit_log
from services.api import results as results_api
from services.dashboard import queries
from services.dashboard.session import AdminPage, ViewerPage
from services.dashboard.web import DashboardRoute, PageError, render
from services.deps import SessionDep, SettingsDep

router = APIRouter(route_class=DashboardRoute)
T = TypeVar("T")

PAGE_SIZE = 25
LIVE_REFRESH_S = 5
AUDIT_PAGE_SIZE = 50
PREVIEW_SIZE = 480  # shown at 240 CSS pixels: sharp on high-density screens
Id = Annotated[int, Path(ge=1, le=2**63 - 1)]
PageOffset = Annotated[int, Query(ge=0, le=10_000_000)]
Filter = Annotated[str | None, Query(max_length=64)]


@router.get("/")
def overview(request: Request, session: SessionDep, user: ViewerPage) -> Response:
    """Queue depth, last hour's throughput, and failures with their reasons (refreshed live)."""
    return render(
        request,
        "overview.html",
        user,
        {"o": queries.overview(session=session), "refresh_s": LIVE_REFRESH_S},
    )


@router.get("/overview/live")
def overview_live(request: Request, session: SessionDep, user: ViewerPage) -> Response:
    """The overview's live part alone, fetched every few seconds by dashboard.js."""
    return render(request, "_live.html", user, {"o": queries.overview(session=session)})


def _blank_is_none(value: str | None) -> str | None:
    """HTML forms send empty fields as empty strings; they mean "any"."""
    return (value or "").strip() or None


def _parse(value: str | None, parse: Callable[[str], T], what: str) -> T | None:
    text = _blank_is_none(value)
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError:
        raise PageError(400, f"Invalid {what}.") from None


@router.get("/studies")
def studies(
    request: Request,
    session: SessionDep,
    user: ViewerPage,
    state: Filter = None,
    calling_ae: Filter = None,
    modality: Filter = None,
    received_from: Filter = None,
    received_to: Filter = None,
    offset: PageOffset = 0,
) -> Response:
    """Studies, newest first, filtered by state, calling AE, modality and date received."""
    filters = queries.StudyFilters(
        state=_parse(state, StudyState, "state"),
        calling_ae=_blank_is_none(calling_ae),
        modality=(_blank_is_none(modality) or "").upper() or None,
        received_from=_parse(received_from, date.fromisoformat, "date (from)"),
        received_to=_parse(received_to, date.fromisoformat, "date (to)"),
    )
    page = queries.studies(session=session, filters=filters, limit=PAGE_SIZE, offset=offset)
    audit.by(
        session,
        user.principal,
        "study.list",
        request,
        detail={"count": len(page.rows), "offset": offset, "via": "dashboard"},
    )
    session.commit()
    return render(
        request,
        "studies.html",
        user,
        {"page": page, "filters": filters, "states": list(StudyState)},
    )


@router.get("/studies/{study_id}")
def study(request: Request, session: SessionDep, user: ViewerPage, study_id: Id) -> Response:
    """One study: series, instances, jobs with their timings, results and deliveries."""
    found = queries.study_detail(session=session, study_id=study_id)
    if found is None:
        raise PageError(404, "No such study.")
    audit.by(
        session,
        user.principal,
        "study.read",
        request,
        target_type="study",
        target_id=found.study_instance_uid,
        detail={"via": "dashboard"},
    )
    session.commit()
    return render(request, "study.html", user, {"study": found})


@router.get("/results/{result_id}/preview.png")
def preview(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: ViewerPage,
    result_id: Id,
) -> Response:
    """A result's PNG, rendered and audited (``result.preview``) by the API's own handler; the
    browser authenticates with its cookie, so the page cannot use the API's URL."""
    return results_api.preview_result(
        request, session, settings, user.principal, result_id, max_size=PREVIEW_SIZE
    )


@router.get("/audit")
def audit_trail(
    request: Request,
    session: SessionDep,
    user: AdminPage,
    actor: Annotated[str | None, Query(max_length=80)] = None,
    action: Filter = None,
    outcome: Filter = None,
    offset: PageOffset = 0,
) -> Response:
    """The audit trail, newest first (admins only), read and recorded by the API's own query."""
    filters = {
        "actor": _blank_is_none(actor),
        "action": _blank_is_none(action),
        "outcome": _blank_is_none(outcome),
    }
    page = audit_log.query_audit(
        request,
        session,
        user.principal,
        AUDIT_PAGE_SIZE,
        offset,
        **filters,
        target_type=None,
        target_id=None,
        at_from=None,
        at_to=None,
    )
    return render(
        request,
        "audit.html",
        user,
        {"page": page, "filters": {k: v for k, v in filters.items() if v}},
    )
