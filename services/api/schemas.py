"""Models and parameter types shared by several routers (a job's results and deliveries appear
in many).

Nothing here carries patient data: the database holds identifiers (UIDs), states, timings and AI
findings, never names, patient IDs or birth dates.
"""

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import HTTPException
from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from db.models import DeliveryState, JobState, ResultKind, SCEncoding, StudyState
from radlight import NOT_FOR_PRIMARY_DIAGNOSIS
from radlight.stages import STAGES
from services.operations import OperationError

_UID_EXAMPLE = "1.2.826.0.1.3680043.8.498.1"


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range once converted to UTC") from None


_ISO_DATE_START = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_8601_only(value: object) -> object:
    """pydantic reads a number (``1.5e-61``) as Unix time; the schema promises ISO 8601 only."""
    if isinstance(value, str) and not _ISO_DATE_START.match(value):
        raise ValueError("a time is ISO 8601 with its offset, e.g. 2025-01-31T08:00:00Z")
    if isinstance(value, int | float):
        raise ValueError("a time is ISO 8601 with its offset, not a number")
    return value


UTCTime = Annotated[AwareDatetime, BeforeValidator(_iso_8601_only), AfterValidator(_to_utc)]
"""A query parameter time: ISO 8601 with its offset (``2025-01-31T08:00:00Z``), as UTC."""


MAX_REPORT_CHARS = 20_000


def _has_words(value: str) -> str:
    if not value.strip():
        raise ValueError("the text is empty (only whitespace)")
    if "\x00" in value:
        raise ValueError("the text contains a NUL character")
    return value


ReportText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_REPORT_CHARS,
        description="A radiology report (or part of one) as plain text.",
        examples=["Small left pleural effusion. No pneumothorax."],
    ),
    AfterValidator(_has_words),
]
"""Report text as the grounding endpoints take it: 1 to 20 000 characters, not blank."""


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """``end - start`` in seconds, or None when either is unknown."""
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


class StudyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    study_instance_uid: str = Field(examples=[_UID_EXAMPLE])
    state: StudyState
    instance_count: int
    calling_ae: str | None = Field(examples=["PACS"])
    called_ae: str | None = Field(default=None, examples=["RADLIGHT"])
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    reason: str | None


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    result_id: int
    destination_id: int
    state: DeliveryState
    attempts: int
    last_status: int | None = Field(description="The peer's last DIMSE status.", examples=[0])
    reason: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None


class ResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: ResultKind
    sop_instance_uid: str
    series_instance_uid: str
    source_sop_instance_uid: str | None
    model_name: str = Field(examples=["chexnet-densenet121"])
    model_version: str = Field(examples=["1.0.0"])
    summary: dict[str, object]
    deliveries: list[DeliveryOut] = []
    notice: str = NOT_FOR_PRIMARY_DIAGNOSIS


class ResultDetailOut(ResultOut):
    """One result with where to fetch its object and (for images) a preview."""

    job_id: int
    sop_class_uid: str
    sc_encoding: SCEncoding | None
    created_at: datetime
    dicom_url: str = Field(examples=["/api/v1/results/7/dicom"])
    preview_url: str | None = Field(
        description="Null for objects without pixels to show (SR, GSPS).",
        examples=["/api/v1/results/7/preview.png"],
    )


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    study_id: int
    route_id: int
    state: JobState
    model_name: str = Field(examples=["chexnet-densenet121"])
    model_version: str | None = Field(examples=["1.0.0"])
    model_sha256: str | None
    input_sop_instance_uids: list[str] = []
    attempts: int
    reason: str | None
    created_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None = Field(
        default=None, description="The worker holding (or that last held) the job's lease."
    )
    lease_expires_at: datetime | None = Field(
        default=None, description="A running job is queued again if its worker lets this pass."
    )
    stage_ms: dict[str, float] | None = Field(
        default=None,
        description="Milliseconds spent in each stage, in pipeline order; null until a worker "
        "has run the job. " + "; ".join(f"`{name}`: {what}" for name, what in STAGES.items()),
        examples=[
            {
                "receive": 0.0,
                "assemble": 12.1,
                "queue_wait": 9.8,
                "decode": 31.5,
                "preprocess": 2.2,
                "inference": 41.0,
                "cam": 6.3,
                "build": 88.4,
                "deliver": 24.9,
            }
        ],
    )
    results: list[ResultOut] = []


class JobActionOut(BaseModel):
    """What a retry or reprocess did: the job as it now is, and whether it went on the queue."""

    job: JobOut
    queued: bool = Field(
        description="False when the broker was down: the job stays pending and the node's "
        "dispatcher queues it once the broker answers."
    )
    message: str = Field(examples=["job 12 queued"])


class DeliveryActionOut(BaseModel):
    delivery: DeliveryOut
    queued: bool = Field(
        description="False when the broker was down: the delivery stays pending and the node's "
        "dispatcher queues it once the broker answers."
    )
    message: str = Field(examples=["delivery 5 queued"])


class ErrorOut(BaseModel):
    """Every 4xx carries a sentence that says what was wrong."""

    detail: str = Field(examples=["job 12 is running; only failed ones can be retried"])


_DESCRIBED = {
    400: "The body could not be parsed (not JSON).",
    401: "Not authenticated (no, expired or invalid token or API key).",
    403: "The caller's role does not allow this.",
    404: "Not found.",
    409: "Not in a state that allows this.",
}


def responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses=`` for these error statuses, each with the error body. 401 and 403
    are always included. 422 is left to FastAPI's validation error, which every 422 here uses."""
    wanted = sorted({401, 403, *codes})
    return {code: {"model": ErrorOut, "description": _DESCRIBED[code]} for code in wanted}


def http_error(exc: OperationError) -> HTTPException:
    """The HTTP error an operator action's refusal means (404, 409)."""
    return HTTPException(status_code=exc.status_code, detail=str(exc))
