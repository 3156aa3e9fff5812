"""Configuration pages: destinations (with the C-ECHO test), routes, models; admins edit.

Operators read, as in the API; admins change. Every read and change goes through the API's own
handler functions (``services.api.destinations``, ``routes``, ``models``) called with the signed-in
user as the principal, so the checks, the audit events and the "takes effect without a restart"
behaviour are the API's, not a second copy of them.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.responses import RedirectResponse

from db.models import Delivery, DeliveryState, SCEncoding
from services.api import destinations as destinations_api
from services.api import models as models_api
from services.api import routes as routes_api
from services.dashboard import forms
from services.dashboard.session import AdminForm, AdminPage, OperatorForm, OperatorPage, WebUser
from services.dashboard.web import PREFIX, DashboardRoute, render
from services.deps import SessionDep, SettingsDep

router = APIRouter(route_class=DashboardRoute)

Id = Annotated[int, Path(ge=1, le=2**31 - 1)]
REFUSALS = (forms.FormError, ValidationError, RequestValidationError, HTTPException)


def _status(exc: Exception) -> int:
    """The API's own status for a refusal it raised (404, 409, 422), else 422."""
    return exc.status_code if isinstance(exc, HTTPException) else 422


def _failed_by_destination(session: Session) -> dict[int, int]:
    rows = session.execute(
        select(Delivery.destination_id, func.count())
        .where(Delivery.state == DeliveryState.FAILED)
        .group_by(Delivery.destination_id)
    ).all()
    return dict(rows)


def _destinations_page(
    request: Request, session: SessionDep, user: WebUser, echo: dict[str, Any] | None = None
) -> Response:
    return render(
        request,
        "destinations.html",
        user,
        {
            "destinations": destinations_api.list_destinations(session, user.principal),
            "failed": _failed_by_destination(session),
            "echo": echo,
        },
    )


@router.get("/destinations")
def destinations(request: Request, session: SessionDep, user: OperatorPage) -> Response:
    """Every destination, its routes and failed deliveries, with echo and retry buttons."""
    return _destinations_page(request, session, user)


@router.post("/destinations/{destination_id}/echo")
def echo(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: OperatorForm,
    destination_id: Id,
) -> Response:
    """Send a real C-ECHO now (the API's echo, audited as ``destination.echo``) and show it."""
    outcome = destinations_api.echo_destination(
        request, session, settings, user.principal, destination_id
    )
    return _destinations_page(
        request, session, user, {"destination_id": destination_id, **outcome.model_dump()}
    )


def _destination_form(
    request: Request,
    user: WebUser,
    values: dict[str, Any],
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "destination_edit.html",
        user,
        {"d": values, "encodings": list(SCEncoding), "error": error},
        status_code,
    )


@router.get("/destinations/{destination_id}/edit")
def edit_destination(
    request: Request, session: SessionDep, user: AdminPage, destination_id: Id
) -> Response:
    found = destinations_api.get_destination(session, user.principal, destination_id)
    return _destination_form(request, user, found.model_dump(mode="json"))


@router.post("/destinations/{destination_id}")
def save_destination(
    request: Request,
    session: SessionDep,
    user: AdminForm,
    destination_id: Id,
    form: Annotated[forms.DestinationForm, Form()],
) -> Response:
    """Change a destination through the API's PATCH; the next delivery uses the new values."""
    try:
        destinations_api.update_destination(
            request, session, user.principal, destination_id, form.patch()
        )
    except REFUSALS as exc:
        shown = form.model_dump() | {"id": destination_id, "enabled": form.enabled is not None}
        return _destination_form(request, user, shown, forms.problem(exc), _status(exc))
    return RedirectResponse(
        f"{PREFIX}/destinations?notice=destination-saved&id={destination_id}", status_code=303
    )


@router.get("/routes")
def routes(request: Request, session: SessionDep, user: OperatorPage) -> Response:
    """Every route in the order the node tries them."""
    return render(
        request, "routes.html", user, {"routes": routes_api.list_routes(session, user.principal)}
    )


def _route_form(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: WebUser,
    values: dict[str, Any],
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "route_edit.html",
        user,
        {
            "r": values,
            "error": error,
            "destinations": destinations_api.list_destinations(session, user.principal),
            "models": models_api.list_models(session, settings, user.principal, None),
        },
        status_code,
    )


def _route_values(out: routes_api.RouteOut) -> dict[str, Any]:
    """A route as its edit form shows it: lists comma-separated, thresholds one per line."""
    values = out.model_dump(mode="json")
    for key in ("modalities", "sop_class_uids", "body_parts", "view_positions"):
        values[key] = ", ".join(values[key])
    values["destinations"] = [d["id"] for d in values["destinations"]]
    values["thresholds"] = "\n".join(f"{k} = {v}" for k, v in out.thresholds.items())
    return values


@router.get("/routes/{route_id}/edit")
def edit_route(
    request: Request, session: SessionDep, settings: SettingsDep, user: AdminPage, route_id: Id
) -> Response:
    found = routes_api.get_route(session, user.principal, route_id)
    return _route_form(request, session, settings, user, _route_values(found))


@router.post("/routes/{route_id}")
def save_route(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: AdminForm,
    route_id: Id,
    form: Annotated[forms.RouteForm, Form()],
) -> Response:
    """Change a route through the API's PATCH; the next study that falls quiet follows it."""
    try:
        routes_api.update_route(request, session, settings, user.principal, route_id, form.patch())
    except REFUSALS as exc:
        shown = form.shown() | {"id": route_id}
        return _route_form(
            request, session, settings, user, shown, forms.problem(exc), _status(exc)
        )
    return RedirectResponse(f"{PREFIX}/routes?notice=route-saved&id={route_id}", status_code=303)


@router.get("/models")
def models(
    request: Request, session: SessionDep, settings: SettingsDep, user: OperatorPage
) -> Response:
    """Installed models and versions: cards, file checks, and the routes running each."""
    return render(
        request,
        "models.html",
        user,
        {"models": models_api.list_models(session, settings, user.principal, None)},
    )
