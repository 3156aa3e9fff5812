"""Jobs: what ran, with the results each produced and where they were delivered."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from db.models import Job, JobState, Result
from services import audit
from services.api.schemas import JobOut
from services.auth import ViewerDep
from services.deps import Limit, Offset, Page, SessionDep

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
JobId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_WITH_RESULTS = selectinload(Job.results).selectinload(Result.deliveries)


@router.get("")
def list_jobs(
    session: SessionDep,
    principal: ViewerDep,
    limit: Limit = 50,
    offset: Offset = 0,
    state: JobState | None = None,
) -> Page[JobOut]:
    """Jobs, newest first, with their results and deliveries."""
    query = select(Job)
    if state is not None:
        query = query.where(Job.state == state)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.options(_WITH_RESULTS).order_by(Job.id.desc()).limit(limit).offset(offset)
    )
    return Page[JobOut](
        items=[JobOut.model_validate(j) for j in rows], total=total, limit=limit, offset=offset
    )


@router.get("/{job_id}", responses={404: {"description": "No such job."}})
def get_job(request: Request, session: SessionDep, principal: ViewerDep, job_id: JobId) -> JobOut:
    """One job with its results (each says it is not for primary diagnosis) and deliveries."""
    job = session.scalars(select(Job).options(_WITH_RESULTS).where(Job.id == job_id)).one_or_none()
    if job is None:
        raise HTTPException(status_code=404, detail="no such job")
    out = JobOut.model_validate(job)
    audit.by(
        session,
        principal,
        "job.read",
        request,
        target_type="job",
        target_id=job_id,
    )
    session.commit()
    return out
