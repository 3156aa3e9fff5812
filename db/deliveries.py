"""Deliveries: one row per (result, destination), with state, attempts and the last reason."""

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.models import Delivery, DeliveryState, Destination, Result, utcnow

SENDABLE = (DeliveryState.PENDING, DeliveryState.RETRYING)


def ensure_deliveries(
    *, session: Session, result: Result, destinations: list[Destination]
) -> list[Delivery]:
    """The deliveries of ``result``, creating the missing ones; existing rows are kept as they are."""
    existing = {
        d.destination_id: d
        for d in session.scalars(select(Delivery).where(Delivery.result_id == result.id))
    }
    deliveries: list[Delivery] = []
    for destination in destinations:
        if not destination.enabled:
            continue
        delivery = existing.get(destination.id)
        if delivery is None:
            delivery = Delivery(result_id=result.id, destination_id=destination.id)
            session.add(delivery)
            session.flush()
        deliveries.append(delivery)
    return deliveries


def claim_delivery(*, session: Session, delivery_id: int) -> bool:
    """Claim one delivery for sending, if it is waiting to be sent (conditional update)."""
    return bool(claim_deliveries(session=session, delivery_ids=[delivery_id]))


def claim_deliveries(*, session: Session, delivery_ids: Sequence[int]) -> dict[int, int]:
    """Claim the sendable ones of ``delivery_ids`` at once (as :func:`claim_delivery` each);
    returns claimed id → its attempts, now counting this one. One statement for a job's lot."""
    if not delivery_ids:
        return {}
    rows = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(delivery_ids), Delivery.state.in_(SENDABLE))
        .values(state=DeliveryState.SENDING, attempts=Delivery.attempts + 1, updated_at=utcnow())
        .returning(Delivery.id, Delivery.attempts)
    )
    return {row.id: row.attempts for row in rows}


def destinations_of(*, session: Session, delivery_ids: Sequence[int]) -> dict[int, Destination]:
    """Each delivery's destination, in one query."""
    rows = session.execute(
        select(Delivery.id, Destination)
        .join(Destination, Delivery.destination_id == Destination.id)
        .where(Delivery.id.in_(delivery_ids))
    )
    return {row.id: row.Destination for row in rows}


def mark_deliveries_sent(*, session: Session, statuses: Mapping[int, int]) -> None:
    """Mark deliveries SENT with each one's DIMSE status (as :func:`mark_delivery`), one
    statement per distinct status."""
    by_status: dict[int, list[int]] = {}
    for delivery_id, status in statuses.items():
        by_status.setdefault(status, []).append(delivery_id)
    now = utcnow()
    for status, ids in by_status.items():
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids))
            .values(
                state=DeliveryState.SENT,
                last_status=status,
                reason=None,
                updated_at=now,
                sent_at=now,
            ),
            execution_options={"synchronize_session": False},
        )


def mark_delivery(
    *,
    session: Session,
    delivery_id: int,
    state: DeliveryState,
    status: int | None = None,
    reason: str | None = None,
) -> None:
    values: dict[str, object] = {
        "state": state,
        "last_status": status,
        "reason": reason,
        "updated_at": utcnow(),
    }
    if state is DeliveryState.SENT:
        values["sent_at"] = utcnow()
    session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))


def reopen_delivery(*, session: Session, delivery_id: int) -> None:
    """Put a sent or failed delivery back in line (a re-run replaced its result), with a fresh
    retry budget: the new result has not been tried yet."""
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.state != DeliveryState.SENDING)
        .values(**_fresh_budget())
    )


def _fresh_budget() -> dict[str, object]:
    """What a reopened delivery starts with: pending, untried, no status or reason."""
    return {
        "state": DeliveryState.PENDING,
        "attempts": 0,
        "last_status": None,
        "reason": None,
        "updated_at": utcnow(),
    }


def stale_deliveries(
    *, session: Session, pending_before: datetime, sending_before: datetime
) -> list[int]:
    """Deliveries that should be moving but are not: never queued, or a worker died sending.

    RETRYING ones are excluded while their retry is scheduled; they count as stale like SENDING
    once ``sending_before`` has passed.
    """
    return list(
        session.scalars(
            select(Delivery.id)
            .where(
                or_(
                    (Delivery.state == DeliveryState.PENDING)
                    & (Delivery.updated_at < pending_before),
                    Delivery.state.in_((DeliveryState.SENDING, DeliveryState.RETRYING))
                    & (Delivery.updated_at < sending_before),
                )
            )
            .order_by(Delivery.id)
            .limit(500)
        )
    )


def requeue_delivery(*, session: Session, delivery_id: int) -> None:
    """A stalled delivery goes back to PENDING, touched so it is not picked again at once."""
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.state != DeliveryState.SENT)
        .where(Delivery.state != DeliveryState.FAILED)
        .values(state=DeliveryState.PENDING, updated_at=utcnow())
    )


def reopen_failed_delivery(*, session: Session, delivery_id: int) -> bool:
    """An operator's retry: a FAILED delivery back to PENDING with a fresh retry budget; False
    when it is not FAILED (anymore). Unlike :func:`reopen_delivery` a SENT one is left alone."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.state == DeliveryState.FAILED)
        .values(**_fresh_budget())
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def failed_delivery_ids(
    *, session: Session, destination_id: int | None = None, limit: int = 1000
) -> list[int]:
    """FAILED deliveries, oldest first, optionally to one destination."""
    query = select(Delivery.id).where(Delivery.state == DeliveryState.FAILED)
    if destination_id is not None:
        query = query.where(Delivery.destination_id == destination_id)
    return list(session.scalars(query.order_by(Delivery.id).limit(limit)))


def note_pending(*, session: Session, delivery_ids: list[int], reason: str) -> None:
    """Say why PENDING deliveries wait (e.g. the broker was down when they were retried)."""
    if delivery_ids:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids), Delivery.state == DeliveryState.PENDING)
            .values(reason=reason)
        )
