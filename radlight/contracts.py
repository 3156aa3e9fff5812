"""Queue contracts: task names, queue names and payload models shared by producers and workers.

Producers (the DICOM node, the API) send tasks by name with these payloads; they never import
``workers`` (and so never import onnxruntime). Payloads hold ids only, JSON serialised.
"""

from pydantic import BaseModel, ConfigDict, Field

QUEUE_INFERENCE = "radlight.inference"
QUEUE_DELIVERY = "radlight.delivery"

TASK_PROCESS_JOB = "radlight.process_job"
TASK_DELIVER = "radlight.deliver"

TASK_QUEUES: dict[str, str] = {
    TASK_PROCESS_JOB: QUEUE_INFERENCE,
    TASK_DELIVER: QUEUE_DELIVERY,
}


class ProcessJobPayload(BaseModel):
    """Run the pipeline of one committed Job row."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    job_id: int = Field(gt=0)


class DeliverPayload(BaseModel):
    """Send one Delivery row's result to its destination."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    delivery_id: int = Field(gt=0)
