"""Response models shared by several routers (a job's results and deliveries appear in many)."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from db.models import DeliveryState, JobState, StudyState
from radlight import NOT_FOR_PRIMARY_DIAGNOSIS


class StudyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    study_instance_uid: str
    state: StudyState
    instance_count: int
    calling_ae: str | None
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    reason: str | None


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    destination_id: int
    state: DeliveryState
    attempts: int
    last_status: int | None
    reason: str | None
    sent_at: datetime | None


class ResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: str
    sop_instance_uid: str
    series_instance_uid: str
    source_sop_instance_uid: str | None
    model_name: str
    model_version: str
    summary: dict[str, object]
    deliveries: list[DeliveryOut] = []
    notice: str = NOT_FOR_PRIMARY_DIAGNOSIS


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    study_id: int
    route_id: int
    state: JobState
    model_name: str
    model_version: str | None
    model_sha256: str | None
    attempts: int
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results: list[ResultOut] = []
