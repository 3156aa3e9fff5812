"""SQLAlchemy 2.0 typed ORM: what was received, what was asked of the models, what was sent.

The database is the source of truth: a Job row exists (committed) before its id is queued, and every
Delivery keeps its state and reason, so nothing fails silently and everything can be retried.
"""

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)
AE_TITLE = String(16)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class StudyState(enum.StrEnum):
    RECEIVING = "receiving"  # instances still arriving; assembled when quiet
    COMPLETE = "complete"  # assembled and routed
    UNROUTED = "unrouted"  # assembled, no route matched


class JobState(enum.StrEnum):
    PENDING = "pending"  # committed, not yet on the queue
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    NOT_ANALYSED = "not_analysed"  # valid input the pipeline must not analyse; reason says why
    FAILED = "failed"
    CANCELLED = "cancelled"  # an operator cancelled it before a worker claimed it; never claimed


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"


class ResultKind(enum.StrEnum):
    HEATMAP_SC = "heatmap_sc"  # one finding's heatmap over the source
    SUMMARY_SC = "summary_sc"  # every present finding's region outlined
    FINDINGS_SR = "findings_sr"  # TID 1500 report of every finding
    PROBABILITY_SEG = "probability_seg"  # fractional SEG, one segment per present finding
    REGION_GSPS = "region_gsps"  # presentation state with the regions as annotations
    NOT_ANALYSED_SR = "not_analysed_sr"  # the study was seen but not analysed, and why
    GROUNDED_SR = "grounded_sr"  # the radiologist's report, each sentence with its region
    GROUNDED_SC = "grounded_sc"  # one grounded sentence's region over the source image


class SCEncoding(enum.StrEnum):
    """How a destination wants Secondary Capture images: lossless, or JPEG baseline (lossy)."""

    LOSSLESS = "lossless"
    JPEG_BASELINE = "jpeg_baseline"


def _enum(cls: type[enum.StrEnum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


route_destination = Table(
    "route_destination",
    Base.metadata,
    Column("route_id", ForeignKey("route.id", ondelete="CASCADE"), primary_key=True),
    Column("destination_id", ForeignKey("destination.id", ondelete="CASCADE"), primary_key=True),
)


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    state: Mapped[StudyState] = mapped_column(_enum(StudyState), default=StudyState.RECEIVING)
    calling_ae: Mapped[str | None] = mapped_column(AE_TITLE)
    called_ae: Mapped[str | None] = mapped_column(AE_TITLE)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(index=True)  # metrics and stats windows
    reason: Mapped[str | None] = mapped_column(Text)

    series: Mapped[list["Series"]] = relationship(back_populates="study", cascade="all, delete")
    jobs: Mapped[list["Job"]] = relationship(back_populates="study", cascade="all, delete")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list["Instance"]] = relationship(back_populates="series", cascade="all")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    relative_path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    # Completed years, for routing on age; patient-level data, never logged.
    patient_age_years: Mapped[int | None] = mapped_column(Integer)
    received_count: Mapped[int] = mapped_column(Integer, default=1)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class IngestFailure(Base):
    """An association's C-STORE that was answered with a failure status, and why."""

    __tablename__ = "ingest_failure"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    calling_ae: Mapped[str | None] = mapped_column(AE_TITLE)
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    quarantine_path: Mapped[str | None] = mapped_column(String(512))


class Destination(Base):
    """A DICOM peer (the PACS) that receives results."""

    __tablename__ = "destination"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    ae_title: Mapped[str] = mapped_column(AE_TITLE)
    enabled: Mapped[bool] = mapped_column(default=True)
    sc_encoding: Mapped[SCEncoding] = mapped_column(
        _enum(SCEncoding), default=SCEncoding.LOSSLESS, server_default=SCEncoding.LOSSLESS.value
    )
    # DICOM TLS to this peer. Paths to PEM files on the worker (mounted secrets), never the keys.
    tls_enabled: Mapped[bool] = mapped_column(default=False, server_default=false())
    tls_ca_file: Mapped[str | None] = mapped_column(String(512))
    tls_cert_file: Mapped[str | None] = mapped_column(String(512))
    tls_key_file: Mapped[str | None] = mapped_column(String(512))


class Route(Base):
    """Which studies go to which pipeline and model, and where the results are sent.

    A null matcher matches anything; ``modalities`` and ``sop_class_uids`` are comma-separated lists.
    """

    __tablename__ = "route"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    priority: Mapped[int] = mapped_column(Integer, default=100)
    called_ae: Mapped[str | None] = mapped_column(AE_TITLE)
    calling_ae: Mapped[str | None] = mapped_column(AE_TITLE)
    modalities: Mapped[str | None] = mapped_column(String(255))
    sop_class_uids: Mapped[str | None] = mapped_column(Text)
    pipeline: Mapped[str] = mapped_column(String(64), default="chest-classifier")
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    produce_seg: Mapped[bool] = mapped_column(default=False, server_default=false())
    produce_gsps: Mapped[bool] = mapped_column(default=False, server_default=false())
    body_parts: Mapped[str | None] = mapped_column(String(255))  # comma-separated, e.g. CHEST
    view_positions: Mapped[str | None] = mapped_column(String(255))  # comma-separated, e.g. PA,AP
    min_age_years: Mapped[int | None] = mapped_column(Integer)
    max_age_years: Mapped[int | None] = mapped_column(Integer)
    quiet_seconds: Mapped[float | None]  # overrides the node's study quiet period for this route
    # The study is complete for this route once this many of the instances it takes have arrived,
    # without waiting for the quiet period (1 for single-image routes); null: quiet period only.
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    thresholds: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # per site: finding -> value

    destinations: Mapped[list[Destination]] = relationship(secondary=route_destination)


class Job(Base):
    """One pipeline run over one study's input set; unique per (study, route, input set)."""

    __tablename__ = "job"
    __table_args__ = (UniqueConstraint("study_id", "route_id", "input_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    route_id: Mapped[int] = mapped_column(ForeignKey("route.id"), index=True)
    input_hash: Mapped[str] = mapped_column(String(64))
    input_sop_instance_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.PENDING, index=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None] = mapped_column(index=True)
    finished_at: Mapped[datetime | None] = mapped_column(index=True)
    # The lease of a RUNNING job: its worker renews it while it works; the dispatcher re-queues
    # the job once it has run out (the worker died). ``worker`` names the holder, for operators.
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    worker: Mapped[str | None] = mapped_column(String(255))
    # Milliseconds spent in each stage (workers.stages.STAGES), written as the job runs.
    stage_ms: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    # Set for a job that grounds a report posted through the API (see StudyReport).
    report_id: Mapped[int | None] = mapped_column(
        ForeignKey("study_report.id", ondelete="SET NULL"), index=True
    )
    study: Mapped[Study] = relationship(back_populates="jobs")
    route: Mapped[Route] = relationship()
    report: Mapped["StudyReport | None"] = relationship()
    results: Mapped[list["Result"]] = relationship(back_populates="job", cascade="all, delete")


class StudyReport(Base):
    """A radiology report posted for a stored study through the API, to ground and to show.

    Reports that arrive as SR instances stay in the instance store; this holds posted text only.
    The text is patient-level data: shown to signed-in users, never logged.
    """

    __tablename__ = "study_report"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Result(Base):
    """A DICOM object a job produced (SC overlay, SR), stored and then delivered."""

    __tablename__ = "result"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    kind: Mapped[ResultKind] = mapped_column(_enum(ResultKind))
    sc_encoding: Mapped[SCEncoding | None] = mapped_column(_enum(SCEncoding))
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    source_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    relative_path: Mapped[str] = mapped_column(String(512))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="results")
    deliveries: Mapped[list["Delivery"]] = relationship(back_populates="result", cascade="all")


class Delivery(Base):
    """One result to one destination: its state, attempts and the last reason."""

    __tablename__ = "delivery"
    __table_args__ = (UniqueConstraint("result_id", "destination_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("result.id", ondelete="CASCADE"), index=True)
    destination_id: Mapped[int] = mapped_column(ForeignKey("destination.id"), index=True)
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState), default=DeliveryState.PENDING, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(index=True)

    result: Mapped[Result] = relationship(back_populates="deliveries")
    destination: Mapped[Destination] = relationship()


class Role(enum.StrEnum):
    """What a user or API key may do; each role includes the ones below it."""

    ADMIN = "admin"  # everything, including configuration, users and the audit trail
    OPERATOR = "operator"  # retry and cancel work, read configuration
    VIEWER = "viewer"  # read studies and results, open the viewer

    def includes(self, other: "Role") -> bool:
        order = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
        return order.index(self) >= order.index(other)


class User(Base):
    """A person who signs in; the password is kept only as an Argon2id hash."""

    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(_enum(Role))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]


class ApiKey(Base):
    """A machine client's key: only its public prefix and a SHA-256 of the secret are kept."""

    __tablename__ = "api_key"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[Role] = mapped_column(_enum(Role))
    created_by: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuditEvent(Base):
    """Who did or read what, when, from where. Append-only: triggers refuse UPDATE and DELETE."""

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(80), index=True)  # "user:alice", "apikey:ris"
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64), index=True)  # "study.read", "route.update"
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(128))
    client_address: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16), default="ok")  # ok, denied, failed
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AllowedCallingAE(Base):
    """A calling AE title the DICOM node accepts; with none here and none in settings, any."""

    __tablename__ = "allowed_calling_ae"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(AE_TITLE, unique=True)
    description: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
