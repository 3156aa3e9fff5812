"""Signing in and out of the dashboard; every attempt is in the audit trail."""

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from starlette.responses import RedirectResponse

from radlight.settings import Settings
from services import audit
from services.auth import login
from services.dashboard.session import (
    ViewerForm,
    end_session,
    login_form_token,
    login_form_token_ok,
    login_nonce,
    remember_login_nonce,
    start_session,
)
from services.dashboard.web import LOGIN_PATH, DashboardRoute, safe_next, templates
from services.deps import SessionDep, SettingsDep
from services.login_limits import refuse_if_locked

router = APIRouter(route_class=DashboardRoute)


def _login_page(
    request: Request,
    settings: Settings,
    *,
    next_path: str,
    username: str = "",
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    nonce = login_nonce(request)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {
            "next": safe_next(next_path),
            "username": username,
            "error": error,
            "form_token": login_form_token(settings, nonce),
        },
        status_code,
    )
    remember_login_nonce(response, settings, nonce)
    return response


@router.get("/login")
def login_form(
    request: Request,
    settings: SettingsDep,
    next: Annotated[str, Query(max_length=2048)] = "",
) -> Response:
    """The sign-in form; ``next`` is the dashboard page to return to."""
    return _login_page(request, settings, next_path=next)


@router.post("/login")
def sign_in(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[str, Form(max_length=256)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    form_token: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    """Check the credentials with the API's own ``login``; a session cookie on success."""
    if not login_form_token_ok(request, settings, form_token):
        return _login_page(
            request,
            settings,
            next_path=next,
            username=username,
            error="The sign-in form expired. Please try again.",
            status_code=403,
        )
    actor = f"user:{username[:64]}"
    if refuse_if_locked(session, settings, request, actor=actor, via="dashboard"):
        return _login_page(
            request,
            settings,
            next_path=next,
            username=username[:64],
            error="Too many failed sign-ins. Please try again later.",
            status_code=429,
        )
    user = login(session, username, password) if username and password else None
    if user is None:
        audit.record(
            session,
            actor=actor,
            role=None,
            action="auth.login",
            request=request,
            outcome="denied",
            detail={"via": "dashboard"},
        )
        session.commit()
        return _login_page(
            request,
            settings,
            next_path=next,
            username=username[:64],
            error="Wrong username or password.",
            status_code=401,
        )
    audit.record(
        session,
        actor=actor,
        role=user.role.value,
        action="auth.login",
        request=request,
        detail={"via": "dashboard"},
    )
    session.commit()
    response = RedirectResponse(safe_next(next), status_code=303)
    start_session(response, settings, user.username)
    return response


@router.post("/logout")
def sign_out(
    request: Request, session: SessionDep, settings: SettingsDep, user: ViewerForm
) -> Response:
    """End the session: the cookie is cleared (the token itself ends with its short lifetime)."""
    audit.by(session, user.principal, "auth.logout", request, detail={"via": "dashboard"})
    session.commit()
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    end_session(response, settings)
    return response
