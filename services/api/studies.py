"""Studies: what arrived, what ran on it, what was sent, and how long each stage took.

Reading studies is reading patient-level data, so every read (list and detail) is audited. The
database holds identifiers, header facts and timings only; there is no patient data to leak.
"""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exists, func, select
from sqlalchemy.orm import selectinload

from db.models import Job, Result, Series, Study, StudyState
from services import audit
from services.api.schemas import (
    JobOut,
    StudyOut,
    UTCTime,
    responses,
    seconds_between,
)
from services.auth import ViewerDep
from services.deps import UID_PATTERN, Limit, Offset, Page, SessionDep

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])
StudyUID = Annotated[
    str, Path(max_length=64, pattern=UID_PATTERN, examples=["1.2.826.0.1.3680043.8.498.1"])
]
AETitle = Annotated[str | None, Query(min_length=1, max_length=16, examples=["PACS"])]


class InstanceOut(BaseModel):
    """One received instance's header facts (no patient data is stored)."""

    model_config = ConfigDict(from_attributes=True)
    sop_instance_uid: str
    sop_class_uid: str = Field(examples=["1.2.840.10008.5.1.4.1.1.1.1"])
    transfer_syntax_uid: str = Field(examples=["1.2.840.10008.1.2.1"])
    view_position: str | None = Field(examples=["PA"])
    size_bytes: int
    received_count: int = Field(description="How often it was received (re-sends counted).")
    received_at: datetime


class SeriesOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    series_instance_uid: str
    modality: str | None = Field(examples=["DX"])
    body_part_examined: str | None = Field(examples=["CHEST"])
    instances: list[InstanceOut]


class JobTimingOut(BaseModel):
    """A job's stages: created (routed) → queued → started → finished; durations in seconds."""

    job_id: int
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    created_to_queued_s: float | None
    queued_to_started_s: float | None
    started_to_finished_s: float | None = Field(description="Inference and result building.")
    stage_ms: dict[str, float] | None = Field(
        description="Milliseconds per stage (see JobOut.stage_ms), as the worker recorded them."
    )


class DeliveryTimingOut(BaseModel):
    delivery_id: int
    job_id: int
    destination_id: int
    sent_at: datetime | None
    finished_to_sent_s: float | None = Field(description="From the job's end to this send.")


class StudyTimingsOut(BaseModel):
    """Per-stage times; a stage not reached yet has nulls."""

    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None = Field(description="Assembled and routed (ready).")
    receiving_s: float | None = Field(description="First to last instance received.")
    receive_to_ready_s: float | None = Field(description="First instance to routed.")
    jobs: list[JobTimingOut]
    deliveries: list[DeliveryTimingOut]


class StudyDetailOut(StudyOut):
    series: list[SeriesOut]
    jobs: list[JobOut]
    timings: StudyTimingsOut


def _timings(study: Study) -> StudyTimingsOut:
    jobs = sorted(study.jobs, key=lambda j: j.id)
    return StudyTimingsOut(
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        completed_at=study.completed_at,
        receiving_s=seconds_between(study.first_received_at, study.last_received_at),
        receive_to_ready_s=seconds_between(study.first_received_at, study.completed_at),
        jobs=[
            JobTimingOut(
                job_id=job.id,
                created_at=job.created_at,
                queued_at=job.queued_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                created_to_queued_s=seconds_between(job.created_at, job.queued_at),
                queued_to_started_s=seconds_between(job.queued_at, job.started_at),
                started_to_finished_s=seconds_between(job.started_at, job.finished_at),
                stage_ms=job.stage_ms,
            )
            for job in jobs
        ],
        deliveries=[
            DeliveryTimingOut(
                delivery_id=delivery.id,
                job_id=job.id,
                destination_id=delivery.destination_id,
                sent_at=delivery.sent_at,
                finished_to_sent_s=seconds_between(job.finished_at, delivery.sent_at),
            )
            for job in jobs
            for result in sorted(job.results, key=lambda r: r.id)
            for delivery in sorted(result.deliveries, key=lambda d: d.id)
        ],
    )


@router.get("", responses=responses())
def list_studies(
    request: Request,
    session: SessionDep,
    principal: ViewerDep,
    limit: Limit = 50,
    offset: Offset = 0,
    state: StudyState | None = None,
    received_from: Annotated[
        UTCTime | None,
        Query(description="First instance received at or after this time (ISO 8601, offset)."),
    ] = None,
    received_to: Annotated[
        UTCTime | None, Query(description="First instance received before this time.")
    ] = None,
    calling_ae: AETitle = None,
    called_ae: AETitle = None,
    modality: Annotated[
        str | None, Query(min_length=1, max_length=16, description="Any series of this modality.")
    ] = None,
) -> Page[StudyOut]:
    """Studies, newest first, filtered by arrival time, state, AE titles and modality."""
    query = select(Study)
    if state is not None:
        query = query.where(Study.state == state)
    if received_from is not None:
        query = query.where(Study.first_received_at >= received_from)
    if received_to is not None:
        query = query.where(Study.first_received_at < received_to)
    if calling_ae is not None:
        query = query.where(Study.calling_ae == calling_ae)
    if called_ae is not None:
        query = query.where(Study.called_ae == called_ae)
    if modality is not None:
        query = query.where(
            exists().where(Series.study_id == Study.id, Series.modality == modality.upper())
        )
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Study.id.desc()).limit(limit).offset(offset))
    page = Page[StudyOut](
        items=[StudyOut.model_validate(s) for s in rows], total=total, limit=limit, offset=offset
    )
    filters = {
        "state": state,
        "received_from": received_from.isoformat() if received_from else None,
        "received_to": received_to.isoformat() if received_to else None,
        "calling_ae": calling_ae,
        "called_ae": called_ae,
        "modality": modality,
    }
    audit.by(
        session,
        principal,
        "study.list",
        request,
        detail={
            "count": len(page.items),
            "offset": offset,
            "filters": {k: v for k, v in filters.items() if v is not None},
        },
    )
    session.commit()
    return page


@router.get("/{study_instance_uid}", responses=responses(404))
def get_study(
    request: Request, session: SessionDep, principal: ViewerDep, study_instance_uid: StudyUID
) -> StudyDetailOut:
    """One study: its series and instances, jobs with results and deliveries, stage timings."""
    study = session.scalars(
        select(Study)
        .options(
            selectinload(Study.series).selectinload(Series.instances),
            selectinload(Study.jobs).selectinload(Job.results).selectinload(Result.deliveries),
        )
        .where(Study.study_instance_uid == study_instance_uid)
    ).one_or_none()
    if study is None:
        raise HTTPException(status_code=404, detail=f"no study {study_instance_uid}")
    out = StudyDetailOut(
        **StudyOut.model_validate(study).model_dump(),
        series=[
            SeriesOut.model_validate(series) for series in sorted(study.series, key=lambda s: s.id)
        ],
        jobs=[JobOut.model_validate(job) for job in sorted(study.jobs, key=lambda j: j.id)],
        timings=_timings(study),
    )
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
