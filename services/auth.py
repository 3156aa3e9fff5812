"""Who is calling and what they may do: users with roles, bearer tokens, API keys.

Clients authenticate with ``Authorization: Bearer <token>`` (OAuth2 password flow at
``/api/v1/auth/token``) or ``X-API-Key: rlk_<prefix>_<secret>``. The dashboard's session cookie
holds the same signed token. Every route declares the least role it needs with ``require``;
anonymous callers get 401, callers without the role 403, and the refusal is audited.
"""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ApiKey, Role, User
from services import audit
from services.api.schemas import ErrorOut
from services.deps import SessionDep, SettingsDep
from services.login_limits import refuse_if_locked
from services.principal import Principal
from services.security import (
    API_KEY_MARK,
    api_key_matches,
    issue_token,
    load_secret_key,
    split_api_key,
    token_subject,
    verify_password,
)

TOKEN_URL = "/api/v1/auth/token"  # noqa: S105 - a path, not a secret
SESSION_COOKIE = "radlight_session"

_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


def _unauthorized(detail: str = "not authenticated") -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


def user_for_token(session: Session, token: str, key: bytes) -> User | None:
    """The active user a valid token names, else None."""
    username = token_subject(token, key)
    if username is None:
        return None
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    return user if user is not None and user.active else None


def _principal_for_api_key(session: Session, presented: str) -> Principal | None:
    parts = split_api_key(presented)
    if parts is None:
        return None
    prefix, secret = parts
    key = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one_or_none()
    if key is None or key.revoked_at is not None or not api_key_matches(secret, key.secret_sha256):
        return None
    key.last_used_at = datetime.now(UTC)
    session.commit()
    return Principal(actor=f"apikey:{key.name}", role=key.role)


def authenticate(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    bearer: Annotated[str | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """The caller behind the request's token or API key; 401 when there is none or it is bad."""
    if bearer and bearer.startswith(f"{API_KEY_MARK}_"):
        api_key = (
            api_key or bearer
        )  # clients that only send a bearer (e.g. Prometheus) may use a key
    if api_key:
        principal = _principal_for_api_key(session, api_key)
        if principal is None:
            raise _unauthorized("invalid or revoked API key")
        return principal
    if bearer:
        user = user_for_token(session, bearer, load_secret_key(settings))
        if user is None:
            raise _unauthorized("invalid or expired token")
        return Principal(actor=f"user:{user.username}", role=user.role, username=user.username)
    raise _unauthorized()


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def require(role: Role) -> Any:
    """A dependency that admits callers holding ``role`` (or a higher one) and audits refusals."""

    def _check(request: Request, principal: PrincipalDep, session: SessionDep) -> Principal:
        if not principal.role.includes(role):
            audit.by(
                session,
                principal,
                "access.denied",
                request=request,
                target_type="route",
                target_id=f"{request.method} {request.url.path}",
                outcome="denied",
                detail={"needs": role.value},
            )
            session.commit()
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"this needs the {role.value} role; you have {principal.role.value}",
            )
        return principal

    return Depends(_check)


ViewerDep = Annotated[Principal, require(Role.VIEWER)]
OperatorDep = Annotated[Principal, require(Role.OPERATOR)]
AdminDep = Annotated[Principal, require(Role.ADMIN)]


class TokenOut(BaseModel):
    access_token: str = Field(examples=["eyJhbGciOiJIUzI1NiIs..."])
    token_type: str = Field(default="bearer", examples=["bearer"])
    expires_in: int = Field(description="Seconds until the token expires.", examples=[900])


class MeOut(BaseModel):
    actor: str = Field(examples=["user:alice"])
    role: Role
    username: str | None = None


router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


def login(session: Session, username: str, password: str) -> User | None:
    """The active user for these credentials, with the sign-in recorded; None if they fail."""
    user = session.scalars(select(User).where(User.username == username[:64])).one_or_none()
    ok = verify_password(password, user.password_hash if user else None)
    if user is None or not ok or not user.active:
        return None
    user.last_login_at = datetime.now(UTC)
    return user


@router.post(
    "/token",
    responses={
        401: {"description": "Wrong username or password, or the account is disabled."},
        429: {"model": ErrorOut, "description": "Too many failed sign-ins; see Retry-After."},
    },
)
def create_token(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    settings: SettingsDep,
) -> TokenOut:
    """OAuth2 password flow: exchange a username and password for a short-lived bearer token.

    Too many failed sign-ins for the username or from the address answer 429 with Retry-After,
    without checking the password.
    """
    actor = f"user:{form.username[:64]}"
    locked = refuse_if_locked(session, settings, request, actor=actor, via="api")
    if locked is not None:
        raise HTTPException(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"{locked.reason}; try again later",
            headers={"Retry-After": str(locked.retry_after_s)},
        )
    user = login(session, form.username, form.password)
    if user is None:
        audit.record(
            session, actor=actor, role=None, action="auth.login", request=request, outcome="denied"
        )
        session.commit()
        raise _unauthorized("wrong username or password")
    lifetime = timedelta(minutes=settings.access_token_minutes)
    issued = issue_token(user.username, load_secret_key(settings), lifetime)
    audit.record(session, actor=actor, role=user.role.value, action="auth.login", request=request)
    session.commit()
    return TokenOut(access_token=issued.access_token, expires_in=int(lifetime.total_seconds()))


@router.get("/me", responses={401: {"model": ErrorOut, "description": "Not authenticated."}})
def who_am_i(principal: PrincipalDep) -> MeOut:
    """The caller's identity and role, as the server sees them."""
    return MeOut(actor=principal.actor, role=principal.role, username=principal.username)
