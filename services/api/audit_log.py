"""The audit trail, for admins: who read or changed what, when and from where, newest first.

Querying the trail is itself recorded (after the page is read, so a page never shows its own
query).
"""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from db.models import AuditEvent
from services import audit
from services.api.schemas import UTCTime, responses
from services.auth import AdminDep
from services.deps import Limit, Offset, Page, SessionDep

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: datetime
    actor: str = Field(examples=["user:alice"])
    role: str | None = Field(examples=["operator"])
    action: str = Field(examples=["delivery.retry"])
    target_type: str | None = Field(examples=["delivery"])
    target_id: str | None = Field(examples=["5"])
    client_address: str | None = Field(examples=["10.0.0.7"])
    outcome: str = Field(description="ok, denied or failed.", examples=["ok"])
    detail: dict[str, Any]


@router.get("", responses=responses())
def query_audit(
    request: Request,
    session: SessionDep,
    principal: AdminDep,
    limit: Limit = 50,
    offset: Offset = 0,
    actor: Annotated[
        str | None, Query(min_length=1, max_length=80, examples=["user:alice"])
    ] = None,
    action: Annotated[
        str | None, Query(min_length=1, max_length=64, examples=["study.read"])
    ] = None,
    target_type: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    target_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    outcome: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
    at_from: Annotated[
        UTCTime | None, Query(alias="from", description="At or after this time (ISO 8601).")
    ] = None,
    at_to: Annotated[UTCTime | None, Query(alias="to", description="Before this time.")] = None,
) -> Page[AuditEventOut]:
    """Audit events, newest first, filtered by who, what, which target, outcome and when."""
    query = select(AuditEvent)
    for column, value in (
        (AuditEvent.actor, actor),
        (AuditEvent.action, action),
        (AuditEvent.target_type, target_type),
        (AuditEvent.target_id, target_id),
        (AuditEvent.outcome, outcome),
    ):
        if value is not None:
            query = query.where(column == value)
    if at_from is not None:
        query = query.where(AuditEvent.at >= at_from)
    if at_to is not None:
        query = query.where(AuditEvent.at < at_to)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset))
    page = Page[AuditEventOut](
        items=[AuditEventOut.model_validate(e) for e in rows],
        total=total,
        limit=limit,
        offset=offset,
    )
    audit.by(session, principal, "audit.query", request, detail={"count": len(page.items)})
    session.commit()
    return page
