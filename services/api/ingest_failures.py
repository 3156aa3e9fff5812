"""Refused C-STOREs: what the DICOM node answered with a failure status, and why.

The sender's calling AE, the SOP class and instance UIDs, the DIMSE status and the reason; the
refused bytes are kept in the store's quarantine folder. Listing them is audited (they name
instances of patients' studies).
"""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from db.models import IngestFailure
from services import audit
from services.api.schemas import UTCTime, responses
from services.auth import ViewerDep
from services.deps import Limit, Offset, Page, SessionDep

router = APIRouter(prefix="/api/v1/ingest-failures", tags=["ingest"])


class IngestFailureOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    received_at: datetime
    calling_ae: str | None = Field(examples=["MODALITY1"])
    sop_class_uid: str | None
    sop_instance_uid: str | None
    status: int = Field(description="The DIMSE status answered.", examples=[0xC210])
    status_hex: str = Field(examples=["0xC210"])
    reason: str = Field(examples=["truncated: Pixel Data is shorter than its header says"])
    quarantined: bool = Field(description="Whether the refused bytes were kept.")


@router.get("", responses=responses())
def list_ingest_failures(
    request: Request,
    session: SessionDep,
    principal: ViewerDep,
    limit: Limit = 50,
    offset: Offset = 0,
    calling_ae: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
    status: Annotated[int | None, Query(ge=0, le=0xFFFF, description="DIMSE status.")] = None,
    received_from: UTCTime | None = None,
    received_to: UTCTime | None = None,
) -> Page[IngestFailureOut]:
    """Refused C-STOREs, newest first."""
    query = select(IngestFailure)
    if calling_ae is not None:
        query = query.where(IngestFailure.calling_ae == calling_ae)
    if status is not None:
        query = query.where(IngestFailure.status == status)
    if received_from is not None:
        query = query.where(IngestFailure.received_at >= received_from)
    if received_to is not None:
        query = query.where(IngestFailure.received_at < received_to)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(IngestFailure.id.desc()).limit(limit).offset(offset))
    items = [
        IngestFailureOut(
            id=row.id,
            received_at=row.received_at,
            calling_ae=row.calling_ae,
            sop_class_uid=row.sop_class_uid,
            sop_instance_uid=row.sop_instance_uid,
            status=row.status,
            status_hex=f"0x{row.status:04X}",
            reason=row.reason,
            quarantined=row.quarantine_path is not None,
        )
        for row in rows
    ]
    audit.by(session, principal, "ingest_failure.list", request, detail={"count": len(items)})
    session.commit()
    return Page[IngestFailureOut](items=items, total=total, limit=limit, offset=offset)
