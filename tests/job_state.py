"""Whether a job is still making results, for tests that wait on "every delivery sent".

A worker records and sends a job's images one by one while it builds the rest, and records the
report with the job's end (``workers.pipeline``): until every job of interest is finished, all
deliveries recorded so far being SENT does not mean all of its results are out.
"""

from sqlalchemy import Connection, func, select

from db.models import Job, Study


def unfinished_jobs(conn: Connection, study_uid: str | None = None) -> int:
    """How many jobs (of the study, or of any study) have not finished."""
    query = select(func.count()).select_from(Job).where(Job.finished_at.is_(None))
    if study_uid is not None:
        query = query.join(Study, Job.study_id == Study.id).where(
            Study.study_instance_uid == study_uid
        )
    return int(conn.execute(query).scalar_one())
