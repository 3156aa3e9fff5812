"""Routing rules: which studies go to which model, and where the results go.

Operators read, admins change. The node's assembler reads the enabled routes from the database on
every pass, and a worker reads its job's route (destinations, SEG/GSPS, thresholds) when it stores
the results, so a change applies to the next study without a restart. A route that jobs refer to
cannot be deleted (409): disable it instead, which keeps their history.

Matchers left empty match anything; one that names values takes only instances that have one of
them (see dicom_node.routing). Lists are stored comma-separated, so no item holds a comma.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.config import find_destinations, join_list, route_job_count, split_list
from db.models import Route
from radlight.settings import Settings
from services.api.config_fields import (
    UID,
    AETitle,
    CodeString,
    Identifier,
    Name,
    changes,
    conflict,
    delete_audited,
    merged,
    not_found,
    save_audited,
    unprocessable,
)
from services.api.models import card_for, check_thresholds
from services.api.schemas import responses
from services.auth import AdminDep, OperatorDep
from services.deps import SessionDep, SettingsDep
from services.principal import Principal

router = APIRouter(prefix="/api/v1/routes", tags=["routes"])
RouteId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The route's id.")]
MAX_LIST_CHARS = 255  # the columns holding modalities, body parts and view positions

Pipeline = Literal["chest-classifier"]
Threshold = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
FindingName = Annotated[str, Field(min_length=1, max_length=64)]
Thresholds = Annotated[
    dict[FindingName, Threshold],
    Field(
        max_length=64,
        description="Per-site operating thresholds, finding name -> [0, 1]; they override the "
        "model card's. Names must be findings of the route's model.",
        examples=[{"Pneumothorax": 0.35, "Effusion": 0.6}],
    ),
]
DestinationRef = Annotated[int | str, Field(description="A destination's id or name.")]
_SCALARS = (
    "name",
    "enabled",
    "priority",
    "called_ae",
    "calling_ae",
    "pipeline",
    "model_name",
    "model_version",
    "min_age_years",
    "max_age_years",
    "produce_seg",
    "produce_gsps",
    "quiet_seconds",
    "expected_instances",
)  # fields stored as they are; lists, thresholds and destinations need converting


class RouteIn(BaseModel):
    """A route as an admin writes it (POST, PUT). Omitted matchers match anything."""

    model_config = ConfigDict(extra="forbid")
    name: Name = Field(examples=["chest-xray"])
    enabled: bool = True
    priority: int = Field(default=100, ge=0, le=1_000_000, description="Lower runs first.")
    called_ae: AETitle | None = Field(default=None, description="Only associations to this AE.")
    calling_ae: AETitle | None = Field(default=None, description="Only studies from this AE.")
    modalities: list[CodeString] = Field(default=[], max_length=32, examples=[["DX", "CR"]])
    sop_class_uids: list[UID] = Field(default=[], max_length=64)
    body_parts: list[CodeString] = Field(default=[], max_length=32, examples=[["CHEST"]])
    view_positions: list[CodeString] = Field(default=[], max_length=32, examples=[["PA", "AP"]])
    min_age_years: int | None = Field(default=None, ge=0, le=150)
    max_age_years: int | None = Field(default=None, ge=0, le=150)
    pipeline: Pipeline = "chest-classifier"
    model_name: Identifier = Field(examples=["chexnet-densenet121-untrained"])
    model_version: Identifier | None = Field(
        default=None, description="A pinned version, or null to follow the latest installed."
    )
    destinations: list[DestinationRef] = Field(default=[], max_length=32, examples=[["main-pacs"]])
    produce_seg: bool = False
    produce_gsps: bool = False
    quiet_seconds: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description="Silence before a study is routed here; null uses the node's setting.",
    )
    expected_instances: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Route a study as soon as this many of the instances the route takes have "
        "arrived (1 for single-image studies), without waiting for the quiet period.",
    )
    thresholds: Thresholds = {}

    @model_validator(mode="after")
    def _consistent(self) -> "RouteIn":
        low, high = self.min_age_years, self.max_age_years
        if low is not None and high is not None and low > high:
            raise ValueError("min_age_years must not exceed max_age_years")
        for field in ("modalities", "body_parts", "view_positions"):
            if len(",".join(getattr(self, field))) > MAX_LIST_CHARS:
                raise ValueError(f"{field} is too long ({MAX_LIST_CHARS} characters at most)")
        return self


class RoutePatch(BaseModel):
    """Only the fields to change (PATCH); null clears a nullable matcher."""

    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    enabled: bool | None = None
    priority: int | None = Field(default=None, ge=0, le=1_000_000)
    called_ae: AETitle | None = None
    calling_ae: AETitle | None = None
    modalities: list[CodeString] | None = Field(default=None, max_length=32)
    sop_class_uids: list[UID] | None = Field(default=None, max_length=64)
    body_parts: list[CodeString] | None = Field(default=None, max_length=32)
    view_positions: list[CodeString] | None = Field(default=None, max_length=32)
    min_age_years: int | None = Field(default=None, ge=0, le=150)
    max_age_years: int | None = Field(default=None, ge=0, le=150)
    pipeline: Pipeline | None = None
    model_name: Identifier | None = None
    model_version: Identifier | None = None
    destinations: list[DestinationRef] | None = Field(default=None, max_length=32)
    produce_seg: bool | None = None
    produce_gsps: bool | None = None
    quiet_seconds: float | None = Field(default=None, ge=0, le=86_400, allow_inf_nan=False)
    expected_instances: int | None = Field(default=None, ge=1, le=100_000)
    thresholds: Thresholds | None = None


class ModelActivation(BaseModel):
    """The model version a route runs: a pinned version, or null for the latest installed."""

    model_config = ConfigDict(extra="forbid")
    model_name: Identifier = Field(examples=["chexnet-densenet121-untrained"])
    model_version: Identifier | None = Field(default=None, examples=["1.0.0"])


class ThresholdsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thresholds: Thresholds


class RouteDestinationOut(BaseModel):
    id: int
    name: str
    enabled: bool


class RouteOut(BaseModel):
    id: int
    name: str
    enabled: bool
    priority: int
    called_ae: str | None
    calling_ae: str | None
    modalities: list[str]
    sop_class_uids: list[str]
    body_parts: list[str]
    view_positions: list[str]
    min_age_years: int | None
    max_age_years: int | None
    pipeline: str
    model_name: str
    model_version: str | None = Field(description="Pinned version; null follows the latest.")
    destinations: list[RouteDestinationOut]
    produce_seg: bool
    produce_gsps: bool
    quiet_seconds: float | None
    expected_instances: int | None
    thresholds: dict[str, float]


def _fields(route: Route) -> dict[str, Any]:
    """The row's values in the API's shape (read as stored: the CLI may have written them)."""
    return {
        "name": route.name,
        "enabled": route.enabled,
        "priority": route.priority,
        "called_ae": route.called_ae,
        "calling_ae": route.calling_ae,
        "modalities": split_list(route.modalities),
        "sop_class_uids": split_list(route.sop_class_uids),
        "body_parts": split_list(route.body_parts),
        "view_positions": split_list(route.view_positions),
        "min_age_years": route.min_age_years,
        "max_age_years": route.max_age_years,
        "pipeline": route.pipeline,
        "model_name": route.model_name,
        "model_version": route.model_version,
        "destinations": [d.id for d in route.destinations],
        "produce_seg": route.produce_seg,
        "produce_gsps": route.produce_gsps,
        "quiet_seconds": route.quiet_seconds,
        "expected_instances": route.expected_instances,
        "thresholds": dict(route.thresholds or {}),
    }


def _out(route: Route) -> RouteOut:
    fields = _fields(route) | {
        "destinations": [
            RouteDestinationOut(id=d.id, name=d.name, enabled=d.enabled) for d in route.destinations
        ]
    }
    return RouteOut(id=route.id, **fields)


def _get(session: Session, route_id: int) -> Route:
    route = session.get(Route, route_id)
    if route is None:
        raise not_found("route")
    return route


def _save(
    request: Request,
    session: Session,
    principal: Principal,
    settings: Settings,
    route: Route,
    values: RouteIn,
    action: str,
) -> RouteOut:
    """Check ``values`` against the registry and destinations, write, audit, commit."""
    check_thresholds(card_for(settings, values.model_name, values.model_version), values.thresholds)
    other = session.scalars(select(Route.id).where(Route.name == values.name)).first()
    if other is not None and other != route.id:
        raise conflict(f"a route named {values.name!r} exists already")
    try:
        destinations = find_destinations(session=session, refs=values.destinations)
    except ValueError as exc:
        raise unprocessable("destinations", str(exc), values.destinations) from None
    before = {} if route.id is None else _fields(route)
    for key in _SCALARS:
        setattr(route, key, getattr(values, key))
    route.modalities = join_list(values.modalities, upper=True)
    route.sop_class_uids = join_list(values.sop_class_uids)
    route.body_parts = join_list(values.body_parts, upper=True)
    route.view_positions = join_list(values.view_positions, upper=True)
    route.thresholds = dict(values.thresholds) or None
    route.destinations = destinations
    detail = {"changes": changes(before, _fields(route))}
    save_audited(
        session, principal, request, route, action=action, target_type="route", detail=detail
    )
    return _out(route)


@router.get("", responses=responses())
def list_routes(session: SessionDep, principal: OperatorDep) -> list[RouteOut]:
    """Every route, in the order the assembler tries them (priority, then id)."""
    return [_out(r) for r in session.scalars(select(Route).order_by(Route.priority, Route.id))]


@router.post("", status_code=status.HTTP_201_CREATED, responses=responses(400, 409))
def create_route(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: AdminDep,
    body: RouteIn,
) -> RouteOut:
    """Add a route; the next study that falls quiet is matched against it."""
    return _save(request, session, principal, settings, Route(), body, "route.create")


@router.get("/{route_id}", responses=responses(404))
def get_route(session: SessionDep, principal: OperatorDep, route_id: RouteId) -> RouteOut:
    return _out(_get(session, route_id))


@router.put("/{route_id}", responses=responses(400, 404, 409))
def replace_route(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: AdminDep,
    route_id: RouteId,
    body: RouteIn,
) -> RouteOut:
    """Replace every field (omitted matchers are cleared)."""
    route = _get(session, route_id)
    return _save(request, session, principal, settings, route, body, "route.update")


@router.patch("/{route_id}", responses=responses(400, 404, 409))
def update_route(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: AdminDep,
    route_id: RouteId,
    body: RoutePatch,
) -> RouteOut:
    """Change only the fields given, e.g. ``{"destinations": ["pacs-b"]}``."""
    route = _get(session, route_id)
    values = merged(RouteIn, _fields(route), body.model_dump(exclude_unset=True))
    return _save(request, session, principal, settings, route, values, "route.update")


@router.delete("/{route_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(404, 409))
def delete_route(
    request: Request, session: SessionDep, principal: AdminDep, route_id: RouteId
) -> Response:
    """Delete a route no job refers to; one with history is disabled instead (409)."""
    route = _get(session, route_id)
    jobs = route_job_count(session=session, route_id=route_id)
    if jobs:
        raise conflict(
            f"route {route.name!r} has {jobs} jobs on record; disable it instead "
            "(PATCH enabled=false) to keep their history"
        )
    deleted = {"deleted": _fields(route)}
    return delete_audited(session, principal, request, route, target_type="route", detail=deleted)


@router.put("/{route_id}/model", responses=responses(400, 404))
def activate_model(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: AdminDep,
    route_id: RouteId,
    body: ModelActivation,
) -> RouteOut:
    """Run this model version (or the latest) for the route's next jobs; 422 if not installed."""
    route = _get(session, route_id)
    values = merged(RouteIn, _fields(route), body.model_dump())
    return _save(request, session, principal, settings, route, values, "route.model")


@router.put("/{route_id}/thresholds", responses=responses(400, 404))
def set_thresholds(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: AdminDep,
    route_id: RouteId,
    body: ThresholdsIn,
) -> RouteOut:
    """Set this site's operating thresholds for the route (``{}`` returns to the card's)."""
    route = _get(session, route_id)
    values = merged(RouteIn, _fields(route), {"thresholds": body.thresholds})
    return _save(request, session, principal, settings, route, values, "route.thresholds")
