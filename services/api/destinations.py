"""Destinations: the PACS peers results go to; CRUD and a C-ECHO test.

Operators read, admins change. The delivery task reads a destination's row each time it sends, so
a new host, port or AE title applies to the next delivery without a restart. A destination that
deliveries or routes still refer to cannot be deleted (409): disable it instead (``enabled:
false``), which keeps the delivery history and stops new deliveries to it.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.config import destination_usage
from db.models import Destination, SCEncoding
from dicom_node.echo import echo
from dicom_node.scu import Peer
from services import audit
from services.api.config_fields import (
    AETitle,
    Hostname,
    Name,
    Port,
    changes,
    conflict,
    delete_audited,
    merged,
    not_found,
    save_audited,
)
from services.api.schemas import responses
from services.auth import AdminDep, OperatorDep
from services.deps import SessionDep, SettingsDep
from services.principal import Principal

router = APIRouter(prefix="/api/v1/destinations", tags=["destinations"])
DestinationId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The destination's id.")]
ECHO_TIMEOUT_S = 5.0


PemFile = Annotated[
    str,
    StringConstraints(min_length=2, max_length=512, pattern=r"^/[^\x00-\x1f]*$"),
    Field(examples=["/run/secrets/pacs-ca.pem"]),
]
"""An absolute path to a PEM file on the workers (a mounted secret); the file, never its content."""


class DestinationIn(BaseModel):
    """A destination as an admin writes it (POST, PUT)."""

    model_config = ConfigDict(extra="forbid")
    name: Name = Field(examples=["main-pacs"])
    host: Hostname
    port: Port
    ae_title: AETitle
    enabled: bool = True
    sc_encoding: SCEncoding = Field(
        default=SCEncoding.LOSSLESS,
        description="How Secondary Capture results are sent: lossless, or JPEG baseline (lossy).",
    )
    tls_enabled: bool = Field(default=False, description="Send over DICOM TLS (TLS 1.2 or later).")
    tls_ca_file: PemFile | None = Field(
        default=None, description="CA certificates the peer's must chain to; unset = system store."
    )
    tls_cert_file: PemFile | None = Field(
        default=None, description="Our client certificate, for peers that require one."
    )
    tls_key_file: PemFile | None = Field(default=None, description="The client certificate's key.")

    @model_validator(mode="after")
    def _client_cert_whole(self) -> "DestinationIn":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


class DestinationPatch(BaseModel):
    """Only the fields to change (PATCH)."""

    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    host: Hostname | None = None
    port: Port | None = None
    ae_title: AETitle | None = None
    enabled: bool | None = None
    sc_encoding: SCEncoding | None = None
    tls_enabled: bool | None = None
    tls_ca_file: PemFile | None = None
    tls_cert_file: PemFile | None = None
    tls_key_file: PemFile | None = None


class DestinationOut(BaseModel):
    id: int
    name: str
    host: str
    port: int
    ae_title: str
    enabled: bool
    sc_encoding: SCEncoding
    tls_enabled: bool
    tls_ca_file: str | None
    tls_cert_file: str | None
    tls_key_file: str | None
    routes: list[str] = Field(description="Names of the routes that send results here.")


class EchoOut(BaseModel):
    """The outcome of a C-ECHO to the destination, sent from the API's own process."""

    ok: bool = Field(examples=[True])
    status: int | None = Field(description="The C-ECHO response status, if one came.", examples=[0])
    error: str | None = Field(examples=[None])
    elapsed_ms: float = Field(examples=[12.5])
    calling_ae: str = Field(description="The AE title the echo was sent from.")


def _fields(destination: Destination) -> dict[str, Any]:
    """The row's values as the API writes them (read as stored: the CLI may have written them)."""
    return {key: getattr(destination, key) for key in DestinationIn.model_fields} | {
        "sc_encoding": SCEncoding(destination.sc_encoding).value
    }


def _out(session: Session, destination: Destination) -> DestinationOut:
    routes = destination_usage(session=session, destination_id=destination.id).routes
    return DestinationOut(**_fields(destination), id=destination.id, routes=routes)


def _get(session: Session, destination_id: int) -> Destination:
    destination = session.get(Destination, destination_id)
    if destination is None:
        raise not_found("destination")
    return destination


def _name_taken(session: Session, name: str, destination_id: int | None) -> bool:
    other = session.scalars(select(Destination.id).where(Destination.name == name)).first()
    return other is not None and other != destination_id


def _save(
    request: Request,
    session: Session,
    principal: Principal,
    destination: Destination,
    values: DestinationIn,
    action: str,
) -> DestinationOut:
    """Write ``values`` into ``destination``, audit the change and commit both."""
    if _name_taken(session, values.name, destination.id):
        raise conflict(f"a destination named {values.name!r} exists already")
    before = {} if destination.id is None else _fields(destination)
    for key, value in values.model_dump().items():
        setattr(destination, key, value)
    detail = {"changes": changes(before, values.model_dump(mode="json"))}
    save_audited(
        session,
        principal,
        request,
        destination,
        action=action,
        target_type="destination",
        detail=detail,
    )
    return _out(session, destination)


@router.get("", responses=responses())
def list_destinations(session: SessionDep, principal: OperatorDep) -> list[DestinationOut]:
    """Every destination, by name."""
    rows = session.scalars(select(Destination).order_by(Destination.name))
    return [_out(session, d) for d in rows]


@router.post("", status_code=status.HTTP_201_CREATED, responses=responses(400, 409))
def create_destination(
    request: Request, session: SessionDep, principal: AdminDep, body: DestinationIn
) -> DestinationOut:
    """Add a destination; routes send to it once they name it."""
    return _save(request, session, principal, Destination(), body, "destination.create")


@router.get("/{destination_id}", responses=responses(404))
def get_destination(
    session: SessionDep, principal: OperatorDep, destination_id: DestinationId
) -> DestinationOut:
    return _out(session, _get(session, destination_id))


@router.put("/{destination_id}", responses=responses(400, 404, 409))
def replace_destination(
    request: Request,
    session: SessionDep,
    principal: AdminDep,
    destination_id: DestinationId,
    body: DestinationIn,
) -> DestinationOut:
    """Replace every field; the next delivery to it uses the new values."""
    destination = _get(session, destination_id)
    return _save(request, session, principal, destination, body, "destination.update")


@router.patch("/{destination_id}", responses=responses(400, 404, 409))
def update_destination(
    request: Request,
    session: SessionDep,
    principal: AdminDep,
    destination_id: DestinationId,
    body: DestinationPatch,
) -> DestinationOut:
    """Change only the fields given, e.g. ``{"enabled": false}`` to stop sending there."""
    destination = _get(session, destination_id)
    values = merged(DestinationIn, _fields(destination), body.model_dump(exclude_unset=True))
    return _save(request, session, principal, destination, values, "destination.update")


@router.delete(
    "/{destination_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(404, 409)
)
def delete_destination(
    request: Request, session: SessionDep, principal: AdminDep, destination_id: DestinationId
) -> Response:
    """Delete a destination nothing refers to; one with history is disabled instead (409)."""
    destination = _get(session, destination_id)
    usage = destination_usage(session=session, destination_id=destination_id)
    if usage.deliveries:
        raise conflict(
            f"destination {destination.name!r} has {usage.deliveries} deliveries on record; "
            "disable it instead (PATCH enabled=false) to keep their history"
        )
    if usage.routes:
        raise conflict(
            f"destination {destination.name!r} is used by route(s) {', '.join(usage.routes)}; "
            "remove it from them first, or disable it"
        )
    deleted = {"deleted": _fields(destination)}
    return delete_audited(
        session, principal, request, destination, target_type="destination", detail=deleted
    )


@router.post("/{destination_id}/echo", responses=responses(404))
def echo_destination(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: OperatorDep,
    destination_id: DestinationId,
) -> EchoOut:
    """Send a real C-ECHO to the destination now (short timeouts) and say how it went.

    The answer is 200 whatever the peer did; ``ok`` and ``error`` tell. Disabled destinations
    can be tested too, before they are enabled.
    """
    destination = _get(session, destination_id)
    peer = Peer.of(destination)
    session.commit()  # end the read transaction: no database lock is held while the network waits
    outcome = echo(peer, calling_ae=settings.result_ae_title, timeout_s=ECHO_TIMEOUT_S)
    result = EchoOut(
        ok=outcome.ok,
        status=outcome.status,
        error=outcome.error,
        elapsed_ms=round(outcome.elapsed_s * 1000, 1),
        calling_ae=settings.result_ae_title,
    )
    audit.by(
        session,
        principal,
        "destination.echo",
        request,
        target_type="destination",
        target_id=destination_id,
        outcome="ok" if outcome.ok else "failed",
        detail=result.model_dump(mode="json"),
    )
    session.commit()
    return result
