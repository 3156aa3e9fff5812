"""Destinations and routes: the node's configuration, kept in the database."""

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Destination, Route, SCEncoding


def upsert_destination(
    *,
    session: Session,
    name: str,
    host: str,
    port: int,
    ae_title: str,
    enabled: bool = True,
    sc_encoding: SCEncoding | str = SCEncoding.LOSSLESS,
) -> Destination:
    destination = session.scalars(select(Destination).where(Destination.name == name)).one_or_none()
    if destination is None:
        destination = Destination(name=name)
        session.add(destination)
    destination.host = host
    destination.port = port
    destination.ae_title = ae_title
    destination.enabled = enabled
    destination.sc_encoding = SCEncoding(sc_encoding)
    session.flush()
    return destination


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
    destination_names: Sequence[str] = (),
    priority: int = 100,
    enabled: bool = True,
    produce_seg: bool = False,
    produce_gsps: bool = False,
) -> Route:
    route = session.scalars(select(Route).where(Route.name == name)).one_or_none()
    if route is None:
        route = Route(name=name)
        session.add(route)
    route.model_name = model_name
    route.model_version = model_version
    route.pipeline = pipeline
    route.called_ae = called_ae
    route.calling_ae = calling_ae
    route.modalities = ",".join(m.upper() for m in modalities) if modalities else None
    route.sop_class_uids = ",".join(sop_class_uids) if sop_class_uids else None
    route.priority = priority
    route.enabled = enabled
    route.produce_seg = produce_seg
    route.produce_gsps = produce_gsps
    if destination_names:
        found = list(
            session.scalars(select(Destination).where(Destination.name.in_(destination_names)))
        )
        missing = set(destination_names) - {d.name for d in found}
        if missing:
            raise ValueError(f"unknown destination(s): {', '.join(sorted(missing))}")
        route.destinations = found
    session.flush()
    return route


def enabled_routes(*, session: Session) -> list[Route]:
    return list(
        session.scalars(
            select(Route).where(Route.enabled.is_(True)).order_by(Route.priority, Route.id)
        )
    )
