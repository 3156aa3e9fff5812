"""Destinations, routes and the calling-AE allow-list: the node's configuration, kept in the database.

Every process reads it from here when it acts (the assembler on each pass, a worker when it stores
results, the delivery task when it sends, the SCP at association time), so a change committed by
the API or the CLI takes effect without a restart.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import AllowedCallingAE, Delivery, Destination, Job, Route, SCEncoding


def join_list(values: Iterable[str] | None, *, upper: bool = False) -> str | None:
    """A comma-separated column value from ``values``; None (matches anything) when empty."""
    cleaned = [v.strip().upper() if upper else v.strip() for v in values or ()]
    return ",".join(v for v in cleaned if v) or None


def split_list(value: str | None) -> list[str]:
    """The items of a comma-separated column value, in order, without blanks."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def upsert_destination(
    *,
    session: Session,
    name: str,
    host: str,
    port: int,
    ae_title: str,
    enabled: bool = True,
    sc_encoding: SCEncoding | str = SCEncoding.LOSSLESS,
    tls: tuple[str | None, str | None, str | None] | None = None,
) -> Destination:
    """Add or update a destination; ``tls`` = (CA file, client cert file, key file) turns TLS on."""
    destination = session.scalars(select(Destination).where(Destination.name == name)).one_or_none()
    if destination is None:
        destination = Destination(name=name)
        session.add(destination)
    destination.host = host
    destination.port = port
    destination.ae_title = ae_title
    destination.enabled = enabled
    destination.sc_encoding = SCEncoding(sc_encoding)
    destination.tls_enabled = tls is not None
    destination.tls_ca_file, destination.tls_cert_file, destination.tls_key_file = tls or (
        None,
        None,
        None,
    )
    session.flush()
    return destination


def find_destinations(*, session: Session, refs: Sequence[int | str]) -> list[Destination]:
    """The destinations named by id or by name, in the given order; ValueError names the unknown."""
    ids = {ref for ref in refs if isinstance(ref, int)}
    names = {ref for ref in refs if isinstance(ref, str)}
    found: list[Destination] = []
    if ids or names:
        found = list(
            session.scalars(
                select(Destination).where(Destination.id.in_(ids) | Destination.name.in_(names))
            )
        )
    by_ref: dict[int | str, Destination] = {d.id: d for d in found if d.id in ids}
    by_ref.update({d.name: d for d in found if d.name in names})
    missing = [str(ref) for ref in refs if ref not in by_ref]
    if missing:
        raise ValueError(f"unknown destination(s): {', '.join(missing)}")
    ordered: dict[int, Destination] = {}
    for ref in refs:
        ordered.setdefault(by_ref[ref].id, by_ref[ref])
    return list(ordered.values())


def upsert_route(
    *,
    session: Session,
    name: str,
    model_name: str,
    model_version: str | None = None,
    pipeline: str = "chest-classifier",
    called_ae: str | None = None,
    calling_ae: str | None = None,
    modalities: Sequence[str] | None = None,
    sop_class_uids: Sequence[str] | None = None,
    body_parts: Sequence[str] | None = None,
    view_positions: Sequence[str] | None = None,
    min_age_years: int | None = None,
    max_age_years: int | None = None,
    destination_names: Sequence[str] = (),
    priority: int = 100,
    enabled: bool = True,
    produce_seg: bool = False,
    produce_gsps: bool = False,
    quiet_seconds: float | None = None,
    thresholds: Mapping[str, float] | None = None,
    expected_instances: int | None = None,
) -> Route:
    if expected_instances is not None and expected_instances < 1:
        raise ValueError(f"expected instances must be at least 1, got {expected_instances}")
    route = session.scalars(select(Route).where(Route.name == name)).one_or_none()
    if route is None:
        route = Route(name=name)
        session.add(route)
    route.model_name = model_name
    route.model_version = model_version
    route.pipeline = pipeline
    route.called_ae = called_ae
    route.calling_ae = calling_ae
    route.modalities = join_list(modalities, upper=True)
    route.sop_class_uids = join_list(sop_class_uids)
    route.body_parts = join_list(body_parts, upper=True)
    route.view_positions = join_list(view_positions, upper=True)
    route.min_age_years = min_age_years
    route.max_age_years = max_age_years
    route.priority = priority
    route.enabled = enabled
    route.produce_seg = produce_seg
    route.produce_gsps = produce_gsps
    route.quiet_seconds = quiet_seconds
    route.expected_instances = expected_instances
    route.thresholds = dict(thresholds) if thresholds else None
    if destination_names:
        route.destinations = find_destinations(session=session, refs=list(destination_names))
    session.flush()
    return route


def enabled_routes(*, session: Session) -> list[Route]:
    return list(
        session.scalars(
            select(Route).where(Route.enabled.is_(True)).order_by(Route.priority, Route.id)
        )
    )


@dataclass(frozen=True)
class DestinationUsage:
    """What still points at a destination: deliveries (history) and routes (live config)."""

    deliveries: int
    routes: list[str]


def destination_usage(*, session: Session, destination_id: int) -> DestinationUsage:
    deliveries = session.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.destination_id == destination_id)
    )
    routes = session.scalars(
        select(Route.name)
        .where(Route.destinations.any(Destination.id == destination_id))
        .order_by(Route.name)
    )
    return DestinationUsage(deliveries=deliveries or 0, routes=list(routes))


def route_job_count(*, session: Session, route_id: int) -> int:
    count = session.scalar(select(func.count()).select_from(Job).where(Job.route_id == route_id))
    return count or 0


def allowed_calling_aes(*, session: Session) -> list[str]:
    """Calling AE titles added to the allow-list at run time (settings add their own)."""
    return list(
        session.scalars(select(AllowedCallingAE.ae_title).order_by(AllowedCallingAE.ae_title))
    )
