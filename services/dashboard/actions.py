"""The dashboard's buttons: retry or cancel a job, retry one or every failed delivery.

Each is a POST form with the session's CSRF token, needs the operator role (as in the API), and
calls the same function as the API in ``services.operations``, which checks the state, audits and
queues. The browser is sent back where it came from with a short fixed notice.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Form, Path, Request, Response
from starlette.responses import RedirectResponse

from services import operations
from services.dashboard.session import OperatorForm
from services.dashboard.web import DashboardRoute, PageError, safe_next
from services.deps import ProducerDep, SessionDep

router = APIRouter(route_class=DashboardRoute)

Id = Annotated[int, Path(ge=1, le=2**63 - 1)]
Back = Annotated[str, Form(max_length=2048)]


def _back(back: str, notice: str, ident: int) -> Response:
    """See the page the form was on again, with a notice key (see ``web.NOTICES``)."""
    parts = urlsplit(safe_next(back))
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("notice", "id")]
    query += [("notice", notice), ("id", str(ident))]
    return RedirectResponse(urlunsplit(("", "", parts.path, urlencode(query), "")), 303)


@contextmanager
def _as_page() -> Iterator[None]:
    """An action the operation refused (wrong state, not found) is shown as a page saying why."""
    try:
        yield
    except operations.OperationError as exc:
        raise PageError(exc.status_code, str(exc)) from None


@router.post("/jobs/{job_id}/retry")
def retry_job(
    request: Request,
    session: SessionDep,
    producer: ProducerDep,
    user: OperatorForm,
    job_id: Id,
    back: Back = "",
) -> Response:
    with _as_page():
        job = operations.retry_job(
            session, producer, job_id, principal=user.principal, request=request
        )
    return _back(back, "job-retried" if operations.job_queued(job) else "job-waiting", job_id)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    request: Request, session: SessionDep, user: OperatorForm, job_id: Id, back: Back = ""
) -> Response:
    with _as_page():
        operations.cancel_job(session, job_id, principal=user.principal, request=request)
    return _back(back, "job-cancelled", job_id)


@router.post("/deliveries/{delivery_id}/retry")
def retry_delivery(
    request: Request,
    session: SessionDep,
    producer: ProducerDep,
    user: OperatorForm,
    delivery_id: Id,
    back: Back = "",
) -> Response:
    with _as_page():
        delivery = operations.retry_delivery(
            session, producer, delivery_id, principal=user.principal, request=request
        )
    notice = "delivery-retried" if operations.delivery_queued(delivery) else "delivery-waiting"
    return _back(back, notice, delivery_id)


@router.post("/deliveries/retry-failed")
def retry_failed_deliveries(
    request: Request,
    session: SessionDep,
    producer: ProducerDep,
    user: OperatorForm,
    destination_id: Annotated[int | None, Form(ge=1, le=2**63 - 1)] = None,
    back: Back = "",
) -> Response:
    with _as_page():
        reopened = operations.retry_failed_deliveries(
            session, producer, destination_id, principal=user.principal, request=request
        )
    return _back(back, "deliveries-retried", len(reopened))
