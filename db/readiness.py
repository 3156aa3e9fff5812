"""What the assembler looks for between ticks: studies that became ready, jobs waiting to be queued.

A study is ready when quiet for long enough, or, for a route that says how many instances it
expects, as soon as that many have arrived. These queries let the assembler react within a few
milliseconds of the instance that completes a study, instead of on its next full tick.
"""

from datetime import datetime

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from db.models import Job, JobState, Study, StudyState


def ready_studies(
    *, session: Session, received_before: datetime, min_instances: int | None
) -> list[Study]:
    """Studies still receiving that are quiet since ``received_before``, or that hold at least
    ``min_instances`` instances (locked for this transaction; others' locked rows skipped)."""
    condition = Study.last_received_at < received_before
    if min_instances is not None:
        condition = or_(condition, Study.instance_count >= min_instances)
    return list(
        session.scalars(
            select(Study)
            .where(Study.state == StudyState.RECEIVING, condition)
            .order_by(Study.last_received_at)
            .with_for_update(skip_locked=True)
        )
    )


def work_waiting(*, session: Session, received_before: datetime, min_instances: int | None) -> bool:
    """One cheap query: is a study ready (as :func:`ready_studies`) or a job not yet queued?"""
    ready = Study.last_received_at < received_before
    if min_instances is not None:
        ready = or_(ready, Study.instance_count >= min_instances)
    study_ready = exists().where(Study.state == StudyState.RECEIVING, ready)
    job_pending = exists().where(Job.state == JobState.PENDING)
    return bool(session.scalar(select(or_(study_ready, job_pending))))
