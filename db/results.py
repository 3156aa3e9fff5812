"""Results: the rows of the objects a job made, and their deliveries, recorded in one flush."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from db.deliveries import reopen_delivery
from db.models import Delivery, DeliveryState, Destination, Result, ResultKind, SCEncoding


@dataclass(frozen=True)
class ResultRecord:
    """What a worker records of one result object it has written to the store."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    kind: ResultKind
    sc_encoding: SCEncoding | None
    source_sop_instance_uid: str | None
    relative_path: str
    model_name: str
    model_version: str
    summary: dict[str, Any]
    destinations: Sequence[Destination] = field(default_factory=tuple)


def record_results(
    *, session: Session, job_id: int, records: Sequence[ResultRecord]
) -> list[dict[int, int]]:
    """Upsert the job's result rows (keyed on SOP Instance UID: a re-run replaces) and a delivery
    per enabled destination of each; returns each record's deliveries, in order, as destination
    id → delivery id.

    A delivery that a re-run finds SENT or FAILED is put back in line with a fresh budget (its
    result was replaced); a pending or retrying one is kept. Two selects and one flush (and an
    update per delivery reopened), whatever the number of results: a job's five results used to cost twenty
    round trips to the database.
    """
    uids = [record.sop_instance_uid for record in records]
    existing = {
        result.sop_instance_uid: result
        for result in session.scalars(
            select(Result)
            .where(Result.sop_instance_uid.in_(uids))
            .options(selectinload(Result.deliveries))
        )
    }
    deliveries: list[list[Delivery]] = []  # each record's, in its destinations' order
    to_reopen: list[Delivery] = []
    for record in records:
        result = existing.get(record.sop_instance_uid)
        if result is None:
            result = Result(sop_instance_uid=record.sop_instance_uid, job_id=job_id, deliveries=[])
            session.add(result)
        result.kind = record.kind
        result.sc_encoding = record.sc_encoding
        result.sop_class_uid = record.sop_class_uid
        result.series_instance_uid = record.series_instance_uid
        result.source_sop_instance_uid = record.source_sop_instance_uid
        result.relative_path = record.relative_path
        result.model_name = record.model_name
        result.model_version = record.model_version
        result.summary = record.summary
        by_destination = {delivery.destination_id: delivery for delivery in result.deliveries}
        mine: list[Delivery] = []
        for destination in record.destinations:
            if not destination.enabled:
                continue
            delivery = by_destination.get(destination.id)
            if delivery is None:
                delivery = Delivery(destination_id=destination.id)
                result.deliveries.append(delivery)
            elif delivery.state in (DeliveryState.SENT, DeliveryState.FAILED):
                to_reopen.append(delivery)
            mine.append(delivery)
        deliveries.append(mine)
    session.flush()
    for delivery in to_reopen:
        reopen_delivery(session=session, delivery_id=delivery.id)
    return [{delivery.destination_id: delivery.id for delivery in mine} for mine in deliveries]
