"""Recording what the DICOM node received: instances (idempotent upserts) and refusals."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
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
    with the rest; a repeated identical set is recognised later by its input hash.
    """
    now = utcnow()
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == received.study_instance_uid)
    ).one_or_none()
    if study is None:
        study = Study(
            study_instance_uid=received.study_instance_uid,
            calling_ae=received.calling_ae,
            called_ae=received.called_ae,
            first_received_at=now,
            instance_count=0,
        )
        session.add(study)
        session.flush()
    study.state = StudyState.RECEIVING
    study.last_received_at = now
    study.calling_ae = received.calling_ae
    study.called_ae = received.called_ae

    series = session.scalars(
        select(Series).where(Series.series_instance_uid == received.series_instance_uid)
    ).one_or_none()
    if series is None:
        series = Series(
            study_id=study.id,
            series_instance_uid=received.series_instance_uid,
            modality=received.modality,
            body_part_examined=received.body_part_examined,
        )
        session.add(series)
        session.flush()

    instance = session.scalars(
        select(Instance).where(Instance.sop_instance_uid == received.sop_instance_uid)
    ).one_or_none()
    duplicate = instance is not None
    if instance is None:
        instance = Instance(series_id=series.id, sop_instance_uid=received.sop_instance_uid)
        session.add(instance)
        study.instance_count = study.instance_count + 1
        instance.received_count = 1
    else:
        instance.received_count = instance.received_count + 1
    instance.sop_class_uid = received.sop_class_uid
    instance.transfer_syntax_uid = received.transfer_syntax_uid
    instance.relative_path = received.relative_path
    instance.size_bytes = received.size_bytes
    instance.sha256 = received.sha256
    instance.view_position = received.view_position
    instance.patient_age_years = received.patient_age_years
    instance.received_at = now
    session.flush()
    return RecordOutcome(instance_id=instance.id, study_id=study.id, duplicate=duplicate)


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
