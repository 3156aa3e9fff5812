"""Recording what the DICOM node received: instances (idempotent upserts) and refusals."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.models import IngestFailure, Instance, Series, Study, StudyState, utcnow


@dataclass(frozen=True, kw_only=True)
class ReceivedInstance:
    """The header facts of one stored instance; no identifying patient data (age, for routing)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    relative_path: str
    size_bytes: int
    sha256: str
    calling_ae: str | None
    called_ae: str | None
    patient_age_years: int | None = None  # completed years, for routing; never logged


@dataclass(frozen=True)
class RecordOutcome:
    instance_id: int
    study_id: int
    duplicate: bool


def record_instance(received: ReceivedInstance, *, session: Session) -> RecordOutcome:
    """Upsert study, series and instance keyed on their UIDs; a re-sent instance is counted.

    Any arrival (new or repeated) re-opens the study for assembly, so a late instance is routed
    with the rest; a repeated identical set is recognised later by its input hash. Written as
    INSERT ... ON CONFLICT statements (PostgreSQL and SQLite alike), four round trips for a new
    instance, because the C-STORE waits on them.
    """
    now = utcnow()
    upsert = _insert_for(session)
    study_t, series_t, instance_t = (
        cast(Table, model.__table__) for model in (Study, Series, Instance)
    )
    aes = {"calling_ae": received.calling_ae, "called_ae": received.called_ae}
    reopened = {"state": StudyState.RECEIVING, "last_received_at": now, **aes}
    study_id: int = session.execute(
        upsert(study_t)
        .values(
            study_instance_uid=received.study_instance_uid,
            first_received_at=now,
            instance_count=0,
            **reopened,
        )
        .on_conflict_do_update(index_elements=[study_t.c.study_instance_uid], set_=reopened)
        .returning(study_t.c.id)
    ).scalar_one()

    # The no-op update makes RETURNING give the id of an existing series too.
    series_stmt = upsert(series_t).values(
        study_id=study_id,
        series_instance_uid=received.series_instance_uid,
        modality=received.modality,
        body_part_examined=received.body_part_examined,
    )
    series_id: int = session.execute(
        series_stmt.on_conflict_do_update(
            index_elements=[series_t.c.series_instance_uid],
            set_={"series_instance_uid": series_stmt.excluded.series_instance_uid},
        ).returning(series_t.c.id)
    ).scalar_one()

    facts = {
        "sop_class_uid": received.sop_class_uid,
        "transfer_syntax_uid": received.transfer_syntax_uid,
        "relative_path": received.relative_path,
        "size_bytes": received.size_bytes,
        "sha256": received.sha256,
        "view_position": received.view_position,
        "patient_age_years": received.patient_age_years,
        "received_at": now,
    }
    instance_id: int | None = session.execute(
        upsert(instance_t)
        .values(
            series_id=series_id,
            sop_instance_uid=received.sop_instance_uid,
            received_count=1,
            **facts,
        )
        .on_conflict_do_nothing(index_elements=[instance_t.c.sop_instance_uid])
        .returning(instance_t.c.id)
    ).scalar_one_or_none()
    duplicate = instance_id is None
    if instance_id is None:
        instance_id = session.execute(
            update(instance_t)
            .where(instance_t.c.sop_instance_uid == received.sop_instance_uid)
            .values(received_count=instance_t.c.received_count + 1, **facts)
            .returning(instance_t.c.id)
        ).scalar_one()
    else:
        session.execute(
            update(study_t)
            .where(study_t.c.id == study_id)
            .values(instance_count=study_t.c.instance_count + 1)
        )
    return RecordOutcome(instance_id=instance_id, study_id=study_id, duplicate=duplicate)


def _insert_for(session: Session) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_update`` (PostgreSQL and SQLite)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql_insert
    return sqlite_insert


def record_ingest_failure(
    *,
    session: Session,
    status: int,
    reason: str,
    calling_ae: str | None,
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
    quarantine_path: str | None,
) -> int:
    failure = IngestFailure(
        status=status,
        reason=reason[:4000],
        calling_ae=calling_ae,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        quarantine_path=quarantine_path,
    )
    session.add(failure)
    session.flush()
    return failure.id


def quiet_studies(*, session: Session, received_before: datetime) -> list[Study]:
    """Studies still receiving whose last instance arrived before ``received_before``."""
    return list(
        session.scalars(
            select(Study)
            .where(Study.state == StudyState.RECEIVING, Study.last_received_at < received_before)
            .order_by(Study.last_received_at)
            .with_for_update(skip_locked=True)
        )
    )


def study_instances(*, session: Session, study_id: int) -> list[Instance]:
    return list(
        session.scalars(
            select(Instance)
            .join(Series)
            .where(Series.study_id == study_id)
            .order_by(Instance.sop_instance_uid)
        )
    )
