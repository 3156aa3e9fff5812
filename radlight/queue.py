"""The Celery application configuration and the producer side of the queue.

Both producers and workers build their Celery app here, so broker settings cannot drift apart.
"""

from pathlib import Path
from typing import Any, ClassVar

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]
from kombu.transport import filesystem, virtual

from radlight.contracts import (
    QUEUE_DELIVERY,
    QUEUE_INFERENCE,
    TASK_DELIVER,
    TASK_PROCESS_JOB,
    TASK_QUEUES,
    DeliverPayload,
    ProcessJobPayload,
)
from radlight.settings import Settings


class FolderTransport(filesystem.Transport):
    """kombu's filesystem transport with its exchange tables kept per queue folder.

    kombu keeps the exchanges and bindings declared by every filesystem connection in one
    process-wide state, and writes a binding's table into the control folder only when that state
    has not seen the binding yet. A second folder queue in the same process (the tests, or any
    process serving two data folders) was then left without tables, and kombu silently dropped
    the messages sent to it. One state per control folder keeps each folder complete.
    """

    _states: ClassVar[dict[str, virtual.BrokerState]] = {}

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        folder = Path(client.transport_options.get("control_folder", "control")).resolve()
        self.state = self._states.setdefault(str(folder), virtual.BrokerState())


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings: JSON only, late acks, one message at a time, explicit queues."""
    config: dict[str, Any] = {
        "broker_url": settings.effective_broker_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_default_queue": QUEUE_INFERENCE,
        "task_default_exchange": QUEUE_INFERENCE,
        "task_default_routing_key": QUEUE_INFERENCE,
        # One direct exchange and routing key per queue, so a message lands in exactly one queue.
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (QUEUE_INFERENCE, QUEUE_DELIVERY)
        ],
        "task_routes": {
            name: {"queue": queue, "exchange": queue, "routing_key": queue}
            for name, queue in TASK_QUEUES.items()
        },
        "task_create_missing_queues": False,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "enable_utc": True,
    }
    if settings.uses_embedded_broker:
        folder = settings.queue_dir
        for sub in ("messages", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config["broker_transport"] = f"{__name__}:{FolderTransport.__name__}"
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "processed_folder": str(folder / "processed"),
            # kombu keeps its exchange tables here; left unset it writes ./control in the cwd.
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    else:
        # Redis: a task not acked within this time is redelivered; longer than any inference.
        config["broker_transport_options"] = {"visibility_timeout": 3600}
    return config


def make_celery(settings: Settings, name: str = "radlight") -> Celery:
    """A Celery app configured for ``settings``; workers register tasks on it."""
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


# A producer must fail fast when the broker is down or hung: its callers (the assembler thread, the
# API, a worker queueing deliveries) keep the work in the database and try again later. Without
# socket timeouts kombu's Redis transport waits forever on a broker that accepts the connection
# but never answers, and its default publish retries multiply every wait by four.
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_RETRY_POLICY: dict[str, float] = {
    "max_retries": 1,
    "interval_start": 0.0,
    "interval_step": 0.5,
    "interval_max": 0.5,
}
_REDIS_SCHEMES = ("redis://", "rediss://", "sentinel://")


class TaskProducer:
    """Sends RadLight tasks by name; what the node and the API use to enqueue work.

    A send raises (kombu's OperationalError) within about ``2 * timeout_s`` when the broker is
    unreachable or does not answer, rather than blocking its caller.
    """

    def __init__(self, settings: Settings, *, timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        self._app = make_celery(settings, name="radlight-producer")
        self._app.conf.task_publish_retry_policy = dict(PUBLISH_RETRY_POLICY)
        if settings.effective_broker_url.startswith(_REDIS_SCHEMES):
            options = dict(self._app.conf.broker_transport_options or {})
            options.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
            self._app.conf.broker_transport_options = options

    def connect(self) -> None:
        """Connect to the broker and declare the queues this producer sends to, now rather than
        on the first send: the first job of a process that had not sent yet waited 218 ms for
        it, 23 ms after this (docs/PERFORMANCE.md). Raises as a send does when the broker is
        unreachable."""
        with self._app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=0)
            for name in dict.fromkeys(TASK_QUEUES.values()):
                producer.maybe_declare(self._app.amqp.queues[name])

    def enqueue_job(self, job_id: int) -> None:
        payload = ProcessJobPayload(job_id=job_id)
        self._app.send_task(
            TASK_PROCESS_JOB, kwargs=payload.model_dump(), queue=TASK_QUEUES[TASK_PROCESS_JOB]
        )

    def enqueue_delivery(self, delivery_id: int, *, countdown: float | None = None) -> None:
        """Queue a delivery; ``countdown`` seconds later when it is a retry after a back-off."""
        payload = DeliverPayload(delivery_id=delivery_id)
        self._app.send_task(
            TASK_DELIVER, kwargs=payload.model_dump(), queue=QUEUE_DELIVERY, countdown=countdown
        )

    def close(self) -> None:
        self._app.close()
