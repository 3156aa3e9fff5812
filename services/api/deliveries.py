"""Deliveries: what was sent where, and retrying what failed (one, or all at once).

The retries live in ``services.operations`` so the dashboard runs the same code. A retried
delivery is PENDING with a fresh retry budget and its id is queued; when the broker is down it
stays PENDING and the node's dispatcher queues it (it picks up pending deliveries a minute old).
"""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from db.models import Delivery, DeliveryState, Result
from services import operations
from services.api.schemas import DeliveryActionOut, DeliveryOut, http_error, responses
from services.auth import OperatorDep, ViewerDep
from services.deps import Limit, Offset, Page, ProducerDep, SessionDep

router = APIRouter(prefix="/api/v1/deliveries", tags=["deliveries"])
DeliveryId = Annotated[int, Path(ge=1, le=2**63 - 1, examples=[5])]
RowId = Annotated[int | None, Query(ge=1, le=2**63 - 1)]


class DeliveryRowOut(DeliveryOut):
    """A delivery with the job it belongs to and its destination's name."""

    job_id: int
    destination_name: str = Field(examples=["pacs"])


class RetryFailedOut(BaseModel):
    delivery_ids: list[int] = Field(description="The deliveries reopened, oldest first.")
    queued: int = Field(description="How many went on the queue at once.")
    message: str = Field(examples=["3 failed deliveries reset to pending and queued"])


def _row(delivery: Delivery) -> DeliveryRowOut:
    return DeliveryRowOut(
        **DeliveryOut.model_validate(delivery).model_dump(),
        job_id=delivery.result.job_id,
        destination_name=delivery.destination.name,
    )


@router.get("", responses=responses())
def list_deliveries(
    session: SessionDep,
    principal: ViewerDep,
    limit: Limit = 50,
    offset: Offset = 0,
    state: DeliveryState | None = None,
    destination_id: RowId = None,
    job_id: RowId = None,
) -> Page[DeliveryRowOut]:
    """Deliveries, newest first: state, attempts, the peer's last status and the reason."""
    query = select(Delivery)
    if state is not None:
        query = query.where(Delivery.state == state)
    if destination_id is not None:
        query = query.where(Delivery.destination_id == destination_id)
    if job_id is not None:
        query = query.join(Result).where(Result.job_id == job_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.options(selectinload(Delivery.result), selectinload(Delivery.destination))
        .order_by(Delivery.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return Page[DeliveryRowOut](
        items=[_row(d) for d in rows], total=total, limit=limit, offset=offset
    )


@router.post("/retry-failed", status_code=status.HTTP_202_ACCEPTED, responses=responses(404))
def retry_failed_deliveries(
    request: Request,
    session: SessionDep,
    producer: ProducerDep,
    principal: OperatorDep,
    destination_id: Annotated[
        int | None,
        Query(ge=1, le=2**63 - 1, description="Only deliveries to this destination."),
    ] = None,
) -> RetryFailedOut:
    """Send every failed delivery again (at most 1000 per call, oldest first), optionally only
    those to one destination, e.g. once that PACS is back."""
    try:
        ids = operations.retry_failed_deliveries(
            session, producer, destination_id, principal=principal, request=request
        )
    except operations.OperationError as exc:
        raise http_error(exc) from None
    waiting = (
        session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.id.in_(ids), Delivery.reason == operations.AWAITING_BROKER)
        )
        if ids
        else 0
    )
    queued = len(ids) - (waiting or 0)
    message = f"{len(ids)} failed deliveries reset to pending; {queued} queued"
    if waiting:
        message += (
            f", {waiting} wait for the broker, which could not be reached: the node's "
            "dispatcher queues them once it answers"
        )
    return RetryFailedOut(delivery_ids=ids, queued=queued, message=message)


@router.post(
    "/{delivery_id}/retry", status_code=status.HTTP_202_ACCEPTED, responses=responses(404, 409)
)
def retry_delivery(
    request: Request,
    session: SessionDep,
    producer: ProducerDep,
    principal: OperatorDep,
    delivery_id: DeliveryId,
) -> DeliveryActionOut:
    """Send a failed delivery again, with a fresh retry budget."""
    try:
        delivery = operations.retry_delivery(
            session, producer, delivery_id, principal=principal, request=request
        )
    except operations.OperationError as exc:
        raise http_error(exc) from None
    queued = operations.delivery_queued(delivery)
    message = (
        f"delivery {delivery_id} reset to pending and queued"
        if queued
        else f"delivery {delivery_id} reset to pending, but the broker could not be reached: "
        "the node's dispatcher queues it once the broker answers"
    )
    return DeliveryActionOut(
        delivery=DeliveryOut.model_validate(delivery), queued=queued, message=message
    )
