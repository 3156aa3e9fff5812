"""Sign-in limits: too many failed sign-ins for one username, or from one address, lock it out.

The counts come from the audit trail, which already records every failed sign-in with the
username, the client address and the time, in the database that every API replica shares; so
the limits hold across replicas and restarts without a table or a cache of their own. A
username's failures count only since its last successful sign-in. While locked out, attempts are
refused before the password is checked (no Argon2 work for an attacker to cause) and recorded as
``throttled``, which does not count, so a lockout ends one window after the last real failure.

Behind a reverse proxy every caller has the proxy's address: set the per-address limit to 0 there
(the per-username limit still applies).
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import AuditEvent
from radlight.settings import Settings
from services import audit
from services.deps import client_address

LOGIN_ACTION = "auth.login"
FAILED = "denied"
THROTTLED = "throttled"


@dataclass(frozen=True)
class Lockout:
    """Why a sign-in is refused unchecked, and after how many seconds to try again."""

    reason: str
    retry_after_s: int


def _failures(session: Session, since: datetime, *conditions: object) -> int:
    query = select(func.count()).where(
        AuditEvent.action == LOGIN_ACTION,
        AuditEvent.outcome == FAILED,
        AuditEvent.at >= since,
        *conditions,  # type: ignore[arg-type]
    )
    return int(session.scalar(query) or 0)


def lockout(
    session: Session, settings: Settings, *, actor: str, address: str | None
) -> Lockout | None:
    """The lockout that applies to a sign-in as ``actor`` from ``address``, if any."""
    window = timedelta(seconds=settings.login_lockout_s)
    retry = int(window.total_seconds())
    since = datetime.now(UTC) - window
    if settings.login_max_failures_per_user:
        last_success = session.scalar(
            select(func.max(AuditEvent.at)).where(
                AuditEvent.action == LOGIN_ACTION,
                AuditEvent.actor == actor,
                AuditEvent.outcome == "ok",
            )
        )
        if last_success is not None:
            since = max(since, last_success.replace(tzinfo=last_success.tzinfo or UTC))
        if (
            _failures(session, since, AuditEvent.actor == actor)
            >= settings.login_max_failures_per_user
        ):
            return Lockout("too many failed sign-ins for this username", retry)
    if settings.login_max_failures_per_address and address is not None:
        since = datetime.now(UTC) - window
        if (
            _failures(session, since, AuditEvent.client_address == address)
            >= settings.login_max_failures_per_address
        ):
            return Lockout("too many failed sign-ins from this address", retry)
    return None


def refuse_if_locked(
    session: Session, settings: Settings, request: Request, *, actor: str, via: str
) -> Lockout | None:
    """The lockout for this sign-in, recorded (``throttled``) and committed; None to go on."""
    locked = lockout(session, settings, actor=actor, address=client_address(request))
    if locked is not None:
        audit.record(
            session,
            actor=actor,
            role=None,
            action=LOGIN_ACTION,
            request=request,
            outcome=THROTTLED,
            detail={"via": via, "reason": locked.reason},
        )
        session.commit()
    return locked
