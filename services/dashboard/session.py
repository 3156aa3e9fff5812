"""The dashboard's session: a signed token in a cookie, roles checked per page, CSRF per form.

The cookie holds the same short-lived access token as the API's bearer (HttpOnly, so scripts
cannot read it; SameSite=Strict, so other sites cannot send it; Secure behind HTTPS). Every POST
form also carries a CSRF token, an HMAC of the session token under the secret key: a forged form
from elsewhere cannot know it, even where a browser ignores SameSite.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Form, Request, Response

from db.models import Role
from radlight.settings import Settings
from services import audit
from services.auth import SESSION_COOKIE, user_for_token
from services.dashboard.web import PREFIX, LoginRequired, PageError
from services.deps import SessionDep, SettingsDep
from services.principal import Principal
from services.security import issue_token, load_secret_key

LOGIN_NONCE_COOKIE = "radlight_login_nonce"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class WebUser:
    """A signed-in person: who they are (for the audit trail) and their form token."""

    principal: Principal
    csrf_token: str

    @property
    def role(self) -> Role:
        return self.principal.role

    def can(self, role: Role | str) -> bool:
        return self.principal.role.includes(Role(role))


def _mac(key: bytes, purpose: str, value: str) -> str:
    return hmac.new(key, f"{purpose}\n{value}".encode(), hashlib.sha256).hexdigest()


def csrf_for(key: bytes, session_token: str) -> str:
    return _mac(key, "csrf", session_token)


def web_user(request: Request, session: SessionDep, settings: SettingsDep) -> WebUser:
    """The user behind the session cookie; a missing, expired or revoked one means sign in."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 4096:
        raise LoginRequired
    key = load_secret_key(settings)
    user = user_for_token(session, token, key)
    if user is None:
        raise LoginRequired
    principal = Principal(actor=f"user:{user.username}", role=user.role, username=user.username)
    return WebUser(principal, csrf_for(key, token))


WebUserDep = Annotated[WebUser, Depends(web_user)]


def require_page(role: Role) -> Any:
    """Admit signed-in users holding ``role`` or more; refusals are audited as in the API."""

    def _check(request: Request, user: WebUserDep, session: SessionDep) -> WebUser:
        if not user.can(role):
            audit.by(
                session,
                user.principal,
                "access.denied",
                request=request,
                target_type="route",
                target_id=f"{request.method} {request.url.path}",
                outcome="denied",
                detail={"needs": role.value},
            )
            session.commit()
            raise PageError(403, f"This needs the {role.value} role; you have {user.role.value}.")
        return user

    return Depends(_check)


ViewerPage = Annotated[WebUser, require_page(Role.VIEWER)]
OperatorPage = Annotated[WebUser, require_page(Role.OPERATOR)]
AdminPage = Annotated[WebUser, require_page(Role.ADMIN)]


def checked_form(role: Role) -> Any:
    """Like ``require_page``, and the form's CSRF token must match the session (else 403)."""

    def _check(
        request: Request,
        user: Annotated[WebUser, require_page(role)],
        session: SessionDep,
        csrf_token: Annotated[str, Form(max_length=128)] = "",
    ) -> WebUser:
        if not hmac.compare_digest(csrf_token.encode(), user.csrf_token.encode()):
            audit.by(
                session,
                user.principal,
                "dashboard.csrf",
                request=request,
                target_type="route",
                target_id=f"{request.method} {request.url.path}",
                outcome="denied",
            )
            session.commit()
            raise PageError(403, "The form's security token is missing or stale; reload the page.")
        return user

    return Depends(_check)


ViewerForm = Annotated[WebUser, checked_form(Role.VIEWER)]
OperatorForm = Annotated[WebUser, checked_form(Role.OPERATOR)]
AdminForm = Annotated[WebUser, checked_form(Role.ADMIN)]


def _cookie_options(settings: Settings) -> dict[str, Any]:
    return {
        "httponly": True,
        "samesite": "strict",
        "secure": settings.secure_cookies,
        "path": PREFIX,
    }


def start_session(response: Response, settings: Settings, username: str) -> None:
    """Give the browser a session cookie for ``username`` that ends with its token."""
    lifetime = timedelta(minutes=settings.access_token_minutes)
    issued = issue_token(username, load_secret_key(settings), lifetime)
    response.set_cookie(
        SESSION_COOKIE,
        issued.access_token,
        max_age=int(lifetime.total_seconds()),
        **_cookie_options(settings),
    )
    response.delete_cookie(LOGIN_NONCE_COOKIE, **_cookie_options(settings))


def end_session(response: Response, settings: Settings) -> None:
    response.delete_cookie(SESSION_COOKIE, **_cookie_options(settings))


def login_nonce(request: Request) -> str:
    """The browser's sign-in nonce, or a new one; the sign-in form's CSRF token is bound to it."""
    nonce = request.cookies.get(LOGIN_NONCE_COOKIE)
    if not nonce or len(nonce) > 128:
        nonce = secrets.token_urlsafe(24)
    return nonce


def login_form_token(settings: Settings, nonce: str) -> str:
    return _mac(load_secret_key(settings), "login", nonce)


def remember_login_nonce(response: Response, settings: Settings, nonce: str) -> None:
    response.set_cookie(LOGIN_NONCE_COOKIE, nonce, max_age=3600, **_cookie_options(settings))


def login_form_token_ok(request: Request, settings: Settings, presented: str) -> bool:
    nonce = request.cookies.get(LOGIN_NONCE_COOKIE)
    if not nonce or len(nonce) > 128:
        return False
    expected = login_form_token(settings, nonce)
    return hmac.compare_digest(presented.encode(), expected.encode())
