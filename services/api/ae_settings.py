"""The DICOM node's AE settings: the calling-AE allow-list.

The node accepts an association when its calling AE title is in ``RADLIGHT_ALLOWED_CALLING_AES``
(read-only here) or in the list kept in the database, which admins edit here; when both are empty,
it accepts any. The node re-reads the database's list every few seconds, so an addition or removal
applies to new associations without a restart. Adding the first entry turns the check on: only
the listed AEs (and those in the settings) can then send.
"""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.models import AllowedCallingAE
from services import audit
from services.api.config_fields import AETitle, conflict, delete_audited, not_found
from services.api.schemas import responses
from services.auth import AdminDep, OperatorDep
from services.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/api/v1/ae", tags=["ae"])
EntryId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The allow-list entry's id.")]
REFRESH_NOTE = "The node applies changes to new associations within a few seconds."


class AllowedAEIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ae_title: AETitle = Field(examples=["MODALITY1"])
    description: str | None = Field(default=None, max_length=255, examples=["CR room 2"])


class AllowedAEOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    ae_title: str
    description: str | None
    created_at: datetime


class AllowListOut(BaseModel):
    accepts_any: bool = Field(description="True when both lists are empty: any calling AE.")
    entries: list[AllowedAEOut] = Field(description="The list kept in the database (editable).")
    from_settings: list[str] = Field(description="RADLIGHT_ALLOWED_CALLING_AES (read-only).")
    note: str = REFRESH_NOTE


@router.get("/allowed-calling", responses=responses())
def get_allow_list(
    session: SessionDep, settings: SettingsDep, principal: OperatorDep
) -> AllowListOut:
    """Which calling AE titles the DICOM node accepts."""
    rows = session.scalars(select(AllowedCallingAE).order_by(AllowedCallingAE.ae_title)).all()
    configured = [t.strip() for t in settings.allowed_calling_aes if t.strip()]
    return AllowListOut(
        accepts_any=not rows and not configured,
        entries=[AllowedAEOut.model_validate(r) for r in rows],
        from_settings=configured,
    )


@router.post("/allowed-calling", status_code=status.HTTP_201_CREATED, responses=responses(400, 409))
def add_allowed(
    request: Request, session: SessionDep, principal: AdminDep, body: AllowedAEIn
) -> AllowedAEOut:
    """Accept associations from this calling AE title (and, if the list was empty, only those
    listed from now on)."""
    taken = conflict(f"{body.ae_title!r} is on the allow-list already")
    if session.scalars(
        select(AllowedCallingAE.id).where(AllowedCallingAE.ae_title == body.ae_title)
    ).first():
        raise taken
    entry = AllowedCallingAE(ae_title=body.ae_title, description=body.description)
    session.add(entry)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise taken from None
    audit.by(
        session,
        principal,
        "ae.allow",
        request,
        target_type="allowed_calling_ae",
        target_id=entry.id,
        detail={"ae_title": entry.ae_title, "description": entry.description},
    )
    session.commit()
    return AllowedAEOut.model_validate(entry)


@router.delete(
    "/allowed-calling/{entry_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(404)
)
def remove_allowed(
    request: Request, session: SessionDep, principal: AdminDep, entry_id: EntryId
) -> Response:
    """Stop accepting this calling AE title (with this and the settings' list empty, any AE is
    accepted)."""
    entry = session.get(AllowedCallingAE, entry_id)
    if entry is None:
        raise not_found("allow-list entry")
    detail = {"ae_title": entry.ae_title}
    return delete_audited(
        session,
        principal,
        request,
        entry,
        target_type="allowed_calling_ae",
        detail=detail,
        action="ae.disallow",
    )
