"""The audit trail: one append-only row per change and per read of patient-level data.

Events are added to the request's own session, so a change and its audit row commit together or
not at all. Denied attempts are committed on their own (nothing else happens in that request).
Details hold identifiers (UIDs, ids, field names), never patient names, IDs or birth dates.
"""

from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from db.models import AuditEvent
from services.deps import client_address
from services.principal import Principal


def record(
    session: Session,
    *,
    actor: str,
    role: str | None,
    action: str,
    request: Request | None = None,
    target_type: str | None = None,
    target_id: object = None,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to ``session``; the caller's commit makes it permanent."""
    event = AuditEvent(
        actor=actor[:80],
        role=role,
        action=action[:64],
        target_type=target_type,
        target_id=None if target_id is None else str(target_id)[:128],
        client_address=client_address(request) if request is not None else None,
        outcome=outcome,
        detail=detail or {},
    )
    session.add(event)
    return event


def by(
    session: Session,
    principal: Principal,
    action: str,
    request: Request | None = None,
    *,
    target_type: str | None = None,
    target_id: object = None,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """An audit event for what an authenticated ``principal`` did."""
    return record(
        session,
        actor=principal.actor,
        role=principal.role.value,
        action=action,
        request=request,
        target_type=target_type,
        target_id=target_id,
        outcome=outcome,
        detail=detail,
    )
