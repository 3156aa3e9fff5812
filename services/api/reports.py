"""``POST /api/v1/studies/{uid}/report``: a RIS sends the report of a stored study to be grounded.

The text is kept (``study_report``) for the viewer, and a job is queued by task name that grounds
every sentence on the study's image and sends a grounded-report SR and an SC per grounded sentence
to the route's destinations, like any other result. Posting the same text again queues nothing.
"""

from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, Field

from services import operations
from services.api.schemas import JobOut, ReportText, http_error, responses
from services.auth import OperatorDep
from services.deps import UID_PATTERN, ProducerDep, SessionDep

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])
StudyUID = Annotated[
    str, Path(max_length=64, pattern=UID_PATTERN, examples=["1.2.826.0.1.3680043.8.498.1"])
]


class ReportIn(BaseModel):
    text: ReportText


class ReportJobOut(BaseModel):
    report_id: int | None
    new_job: bool = Field(description="False when this text was posted before: nothing re-ran.")
    queued: bool = Field(
        description="False when the broker was down: the job stays pending and the node's "
        "dispatcher queues it once the broker answers."
    )
    job: JobOut
    message: str = Field(examples=["job 12 grounds the report"])


@router.post(
    "/{study_instance_uid}/report",
    status_code=status.HTTP_202_ACCEPTED,
    responses=responses(404, 409),
)
def post_report(
    request: Request,
    session: SessionDep,
    producer: ProducerDep,
    principal: OperatorDep,
    study_instance_uid: StudyUID,
    body: ReportIn,
) -> ReportJobOut:
    """Keep the study's report and queue the job that grounds it (grounded SR and SCs are sent
    to the route's destinations). 409 while no route has taken the study: the job reuses the
    route, model and images of the study's latest analysis."""
    try:
        job, created = operations.post_report(
            session, producer, study_instance_uid, body.text, principal=principal, request=request
        )
    except operations.OperationError as exc:
        raise http_error(exc) from None
    queued = operations.job_queued(job)
    if not created:
        message = f"this report was posted before; job {job.id} grounds it ({job.state.value})"
    elif queued:
        message = f"job {job.id} grounds the report"
    else:
        message = f"job {job.id} will ground the report once the broker answers"
    return ReportJobOut(
        report_id=job.report_id,
        new_job=created,
        queued=queued,
        job=JobOut.model_validate(job),
        message=message,
    )
