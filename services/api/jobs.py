"""Jobs: what ran, with the results each produced and where they were delivered; and the operator
actions on them (retry, cancel, reprocess with another model version), which live in
``services.operations`` so the dashboard runs exactly the same code.
"""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from db.models import Job, JobState, Result, Study
from models.card import IDENTIFIER_PATTERN
from services import audit, operations
from services.api.schemas import JobActionOut, JobOut, http_error, responses
from services.auth import OperatorDep, ViewerDep
from services.deps import UID_PATTERN, Limit, Offset, Page, ProducerDep, SessionDep, SettingsDep

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
JobId = Annotated[int, Path(ge=1, le=2**63 - 1, examples=[12])]
_WITH_RESULTS = selectinload(Job.results).selectinload(Result.deliveries)


class ReprocessIn(BaseModel):
    model_version: str = Field(
        min_length=1,
        max_length=64,
        pattern=IDENTIFIER_PATTERN.pattern,
        description="An installed version of the job's model (see /api/v1/models).",
        examples=["1.1.0"],
    )


def _action_out(job: Job, done: str) -> JobActionOut:
    queued = operations.job_queued(job)
    message = (
        f"job {job.id} {done} and queued"
        if queued
        else f"job {job.id} {done}, but the broker could not be reached: it stays pending and "
        "the node's dispatcher queues it once the broker answers"
    )
    return JobActionOut(job=JobOut.model_validate(job), queued=queued, message=message)


@router.get("", responses=responses())
def list_jobs(
    request: Request,
    session: SessionDep,
    principal: ViewerDep,
    limit: Limit = 50,
    offset: Offset = 0,
    state: JobState | None = None,
    study_instance_uid: Annotated[
        str | None, Query(max_length=64, pattern=UID_PATTERN, description="The job's study.")
    ] = None,
    model_name: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    model_version: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> Page[JobOut]:
    """Jobs, newest first, with their results and deliveries."""
    query = select(Job)
    if state is not None:
        query = query.where(Job.state == state)
    if study_instance_uid is not None:
        query = query.join(Study).where(Study.study_instance_uid == study_instance_uid)
    if model_name is not None:
        query = query.where(Job.model_name == model_name)
    if model_version is not None:
        query = query.where(Job.model_version == model_version)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.options(_WITH_RESULTS).order_by(Job.id.desc()).limit(limit).offset(offset)
    )
    page = Page[JobOut](
        items=[JobOut.model_validate(j) for j in rows], total=total, limit=limit, offset=offset
    )
    # The results' summaries are findings about a patient's images: a read of patient-level data.
    audit.by(session, principal, "job.list", request, detail={"count": len(page.items)})
    session.commit()
    return page


@router.get("/{job_id}", responses=responses(404))
def get_job(request: Request, session: SessionDep, principal: ViewerDep, job_id: JobId) -> JobOut:
    """One job with its results (each says it is not for primary diagnosis) and deliveries."""
    job = session.scalars(select(Job).options(_WITH_RESULTS).where(Job.id == job_id)).one_or_none()
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    out = JobOut.model_validate(job)
    audit.by(session, principal, "job.read", request, target_type="job", target_id=job_id)
    session.commit()
    return out


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, responses=responses(404, 409))
def retry_job(
    request: Request,
    session: SessionDep,
    producer: ProducerDep,
    principal: OperatorDep,
    job_id: JobId,
) -> JobActionOut:
    """Run a failed, not-analysed or cancelled job again. Its results keep their UIDs (same
    inputs and model version), so the re-run replaces them in the PACS instead of adding."""
    try:
        job = operations.retry_job(session, producer, job_id, principal=principal, request=request)
    except operations.OperationError as exc:
        raise http_error(exc) from None
    return _action_out(job, "reset to pending")


@router.post("/{job_id}/cancel", responses=responses(404, 409))
def cancel_job(
    request: Request, session: SessionDep, principal: OperatorDep, job_id: JobId
) -> JobOut:
    """Cancel a pending or queued job; no worker will run it. A running job cannot be cancelled
    (409): it finishes on its worker."""
    try:
        job = operations.cancel_job(session, job_id, principal=principal, request=request)
    except operations.OperationError as exc:
        raise http_error(exc) from None
    return JobOut.model_validate(job)


@router.post(
    "/{job_id}/reprocess",
    status_code=status.HTTP_202_ACCEPTED,
    responses=responses(400, 404, 409),
)
def reprocess_job(
    request: Request,
    session: SessionDep,
    producer: ProducerDep,
    settings: SettingsDep,
    principal: OperatorDep,
    job_id: JobId,
    body: ReprocessIn,
) -> JobActionOut:
    """Run the job's study, route and input set with another installed model version.

    A new job is made (its results get new UIDs, so they arrive in the PACS as new series beside
    the old ones). If a job of these inputs already ran that version, that job is re-run
    instead, so a version never gives two sets of results. 422 if the version is not installed.
    """
    try:
        job = operations.reprocess_job(
            session,
            producer,
            job_id,
            body.model_version,
            settings.models_dir,
            principal=principal,
            request=request,
        )
    except operations.InvalidArgumentError as exc:
        raise RequestValidationError(
            [{"loc": ("body", "model_version"), "msg": str(exc), "type": "value_error"}]
        ) from None
    except operations.OperationError as exc:
        raise http_error(exc) from None
    done = f"reprocesses job {job_id} with {job.model_name} {body.model_version}"
    return _action_out(job, done)
