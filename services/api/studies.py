"""Studies: what arrived. Reading them is reading patient-level data, so every read is audited."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from sqlalchemy import func, select

from db.models import Study, StudyState
from services import audit
from services.api.schemas import StudyOut
from services.auth import ViewerDep
from services.deps import UID_PATTERN, Limit, Offset, Page, SessionDep

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])
StudyUID = Annotated[str, Path(max_length=64, pattern=UID_PATTERN)]


@router.get("")
def list_studies(
    request: Request,
    session: SessionDep,
    principal: ViewerDep,
    limit: Limit = 50,
    offset: Offset = 0,
    state: StudyState | None = None,
) -> Page[StudyOut]:
    """Studies, newest first."""
    query = select(Study)
    if state is not None:
        query = query.where(Study.state == state)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Study.id.desc()).limit(limit).offset(offset))
    page = Page[StudyOut](
        items=[StudyOut.model_validate(s) for s in rows], total=total, limit=limit, offset=offset
    )
    audit.by(
        session,
        principal,
        "study.list",
        request,
        detail={"count": len(page.items), "offset": offset},
    )
    session.commit()
    return page


@router.get("/{study_instance_uid}", responses={404: {"description": "No such study."}})
def get_study(
    request: Request, session: SessionDep, principal: ViewerDep, study_instance_uid: StudyUID
) -> StudyOut:
    """One study by its Study Instance UID."""
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_instance_uid)
    ).one_or_none()
    if study is None:
        raise HTTPException(status_code=404, detail="no such study")
    out = StudyOut.model_validate(study)
    audit.by(
        session,
        principal,
        "study.read",
        request,
        target_type="study",
        target_id=study_instance_uid,
    )
    session.commit()
    return out
