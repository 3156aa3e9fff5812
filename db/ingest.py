"""Recording what the DICOM node received: instances (idempotent upserts) and refusals."""

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, select, text, update
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


def record_received(received: ReceivedInstance, *, engine: Engine) -> RecordOutcome:
    """Record ``received`` in a transaction of its own, in as few round trips as the backend
    allows: the C-STORE waits on it. On PostgreSQL that is one, the ``radlight_record_instance``
    function (migration 0010) called in autocommit: the statement is its own transaction, and
    returns only once committed. SQLite runs in this process: the statements of
    :func:`record_instance` in one transaction."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            return _record_in_postgresql(received, connection)
    with Session(engine) as session, session.begin():
        return record_instance(received, session=session)


def record_instance(received: ReceivedInstance, *, session: Session) -> RecordOutcome:
    """Upsert study, series and instance keyed on their UIDs; a re-sent instance is counted.

    Any arrival (new or repeated) re-opens the study for assembly, so a late instance is routed
    with the rest; a repeated identical set is recognised later by its input hash. Written as
    INSERT ... ON CONFLICT statements, on PostgreSQL inside the ``radlight_record_instance``
    function (one round trip; migration 0010), on SQLite as four statements built once
    (:func:`_sqlite_statements`), of which only the parameters change. Runs in the caller's transaction.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return _record_in_postgresql(received, session)
    statements = _sqlite_statements()
    now = utcnow()
    study_id: int = session.execute(
        statements.study,
        {
            "study_uid": received.study_instance_uid,
            "now": now,
            "calling": received.calling_ae,
            "called": received.called_ae,
        },
    ).scalar_one()
    series_id: int = session.execute(
        statements.series,
        {
            "study": study_id,
            "series_uid": received.series_instance_uid,
            "modality_value": received.modality,
            "body_part": received.body_part_examined,
        },
    ).scalar_one()
    facts = {
        "sop_uid": received.sop_instance_uid,
        "sop_class": received.sop_class_uid,
        "syntax": received.transfer_syntax_uid,
        "path": received.relative_path,
        "size": received.size_bytes,
        "digest": received.sha256,
        "view": received.view_position,
        "age": received.patient_age_years,
        "now": now,
    }
    instance_id: int | None = session.execute(
        statements.new_instance, {"series": series_id, **facts}
    ).scalar_one_or_none()
    duplicate = instance_id is None
    if instance_id is None:
        instance_id = session.execute(statements.repeated_instance, facts).scalar_one()
    else:
        session.execute(statements.count_instance, {"study": study_id})
    return RecordOutcome(instance_id=instance_id, study_id=study_id, duplicate=duplicate)


_RECORD_FUNCTION_CALL = text(
    "SELECT instance_id, study_id, duplicate FROM radlight_record_instance("
    ":study_uid, :series_uid, :sop_uid, :sop_class, :syntax, :modality, :body_part, :view,"
    " :path, :size, :digest, :calling, :called, :age, :now)"
)


def _record_in_postgresql(
    received: ReceivedInstance, executor: Session | Connection
) -> RecordOutcome:
    row = executor.execute(
        _RECORD_FUNCTION_CALL,
        {
            "study_uid": received.study_instance_uid,
            "series_uid": received.series_instance_uid,
            "sop_uid": received.sop_instance_uid,
            "sop_class": received.sop_class_uid,
            "syntax": received.transfer_syntax_uid,
            "modality": received.modality,
            "body_part": received.body_part_examined,
            "view": received.view_position,
            "path": received.relative_path,
            "size": received.size_bytes,
            "digest": received.sha256,
            "calling": received.calling_ae,
            "called": received.called_ae,
            "age": received.patient_age_years,
            "now": utcnow(),
        },
    ).one()
    return RecordOutcome(
        instance_id=row.instance_id, study_id=row.study_id, duplicate=row.duplicate
    )


@dataclass(frozen=True)
class _IngestStatements:
    study: Any  # upsert, RETURNING the study's id
    series: Any  # upsert (a no-op update for an existing one), RETURNING its id
    new_instance: Any  # insert or nothing, RETURNING the new id
    repeated_instance: Any  # update of a re-sent instance, RETURNING its id
    count_instance: Any  # the study's instance count + 1


@functools.cache
def _sqlite_statements() -> _IngestStatements:
    """:func:`record_instance`'s statements on SQLite, with bound parameters: building them per
    instance was a quarter of its CPU (SQLAlchemy's coercions). PostgreSQL has them in a function."""
    upsert = sqlite_insert
    study_t, series_t, instance_t = (
        cast(Table, model.__table__) for model in (Study, Series, Instance)
    )
    study = upsert(study_t).values(
        study_instance_uid=bindparam("study_uid"),
        first_received_at=bindparam("now"),
        instance_count=0,
        state=StudyState.RECEIVING,
        last_received_at=bindparam("now"),
        calling_ae=bindparam("calling"),
        called_ae=bindparam("called"),
    )
    reopened = {
        name: study.excluded[name]
        for name in ("state", "last_received_at", "calling_ae", "called_ae")
    }
    series = upsert(series_t).values(
        study_id=bindparam("study"),
        series_instance_uid=bindparam("series_uid"),
        modality=bindparam("modality_value"),
        body_part_examined=bindparam("body_part"),
    )
    facts: dict[str, Any] = {
        "sop_class_uid": bindparam("sop_class"),
        "transfer_syntax_uid": bindparam("syntax"),
        "relative_path": bindparam("path"),
        "size_bytes": bindparam("size"),
        "sha256": bindparam("digest"),
        "view_position": bindparam("view"),
        "patient_age_years": bindparam("age"),
        "received_at": bindparam("now"),
    }
    return _IngestStatements(
        study=study.on_conflict_do_update(
            index_elements=[study_t.c.study_instance_uid], set_=reopened
        ).returning(study_t.c.id),
        # The no-op update makes RETURNING give the id of an existing series too.
        series=series.on_conflict_do_update(
            index_elements=[series_t.c.series_instance_uid],
            set_={"series_instance_uid": series.excluded.series_instance_uid},
        ).returning(series_t.c.id),
        new_instance=upsert(instance_t)
        .values(
            series_id=bindparam("series"),
            sop_instance_uid=bindparam("sop_uid"),
            received_count=1,
            **facts,
        )
        .on_conflict_do_nothing(index_elements=[instance_t.c.sop_instance_uid])
        .returning(instance_t.c.id),
        repeated_instance=update(instance_t)
        .where(instance_t.c.sop_instance_uid == bindparam("sop_uid"))
        .values(received_count=instance_t.c.received_count + 1, **facts)
        .returning(instance_t.c.id),
        count_instance=update(study_t)
        .where(study_t.c.id == bindparam("study"))
        .values(instance_count=study_t.c.instance_count + 1),
    )


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
