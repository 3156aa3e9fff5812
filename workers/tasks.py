"""The Celery app of the workers and its thin tasks: parse, bind log context, call, map errors.

Start with ``radlight worker``; the app reads its settings from the environment once per process.
"""

import gc
import logging
from typing import Any

from celery import Task
from celery.signals import worker_init, worker_process_init
from sqlalchemy.exc import OperationalError

from db.deliveries import mark_delivery
from db.jobs import finish_job, release_for_retry
from db.models import DeliveryState, JobState
from db.session import make_engine, transaction
from models.contract import import_onnx
from radlight.contracts import TASK_DELIVER, TASK_PROCESS_JOB, DeliverPayload, ProcessJobPayload
from radlight.errors import StoreError
from radlight.logs import configure_logging, log_context
from radlight.queue import make_celery
from radlight.settings import load_settings
from workers.context import process_context
from workers.delivery import deliver_result
from workers.pipeline import run_job
from workers.results.iod_lookups import load_standard_tables
from workers.warmup import start_warm_up

logger = logging.getLogger(__name__)

_settings = load_settings()
app = make_celery(_settings, name="radlight-worker")


@worker_init.connect
def _prepare_parent(**_: Any) -> None:
    """In the worker's parent, before its pool forks: read what every child would otherwise
    read on its first job, then put everything made so far out of the collector's sight. A full
    collection walked those 400,000 objects (highdicom's tables, the modules) in 130 ms, in
    every child, and touched each, unsharing their pages (docs/DECISIONS.md).

    An engine made and dropped here (it never connects) imports the database driver and its
    SQLAlchemy dialect once, not in each child (100 ms); ``onnx``, which loading a model needs
    and nothing imports before that, likewise (1 s and more; models.contract). With the threads
    pool this process runs the jobs itself and starts its warm-up here."""
    load_standard_tables()
    make_engine(_settings.effective_database_url).dispose()
    import_onnx()
    gc.collect()
    gc.freeze()
    if _settings.worker_pool == "threads":
        # No child will be forked: this process runs the jobs, so it warms itself up.
        start_warm_up(process_context())


JOB_RETRY_DELAYS_S = (5, 30, 120)


@worker_process_init.connect
def _configure_child(**_: Any) -> None:
    """In each new child: its logging, its context, and its models loaded while it waits for its
    first job (``workers.warmup``; the child answers Celery at once, the loading is a thread's)."""
    configure_logging(_settings.log_level, _settings.log_json, _settings.log_dicom_level)
    start_warm_up(process_context())


@app.task(name=TASK_PROCESS_JOB, bind=True, max_retries=len(JOB_RETRY_DELAYS_S))
def process_job(self: Task, **kwargs: Any) -> None:
    payload = ProcessJobPayload.model_validate(kwargs)
    ctx = process_context()
    with log_context(job_id=payload.job_id, task_id=self.request.id):
        try:
            run_job(payload.job_id, ctx)
        except (OperationalError, StoreError) as exc:
            # The database or the store hiccuped: the job goes back in line and is tried again.
            logger.warning("job %d hit a transient error: %s", payload.job_id, exc)
            try:
                with transaction(ctx.sessions) as session:
                    release_for_retry(session=session, job_id=payload.job_id, reason=str(exc))
            except OperationalError:
                logger.exception("could not release job %d; the dispatcher will", payload.job_id)
            delay = JOB_RETRY_DELAYS_S[min(self.request.retries, len(JOB_RETRY_DELAYS_S) - 1)]
            raise self.retry(exc=exc, countdown=delay) from exc
        except Exception as exc:  # a bug must fail the job visibly, not loop on re-queues
            logger.exception("job %d failed unexpectedly", payload.job_id)
            with transaction(ctx.sessions) as session:
                finish_job(
                    session=session,
                    job_id=payload.job_id,
                    state=JobState.FAILED,
                    reason=f"internal error: {type(exc).__name__}: {exc}"[:2000],
                )


@app.task(name=TASK_DELIVER, bind=True, max_retries=None)
def deliver(self: Task, **kwargs: Any) -> None:
    payload = DeliverPayload.model_validate(kwargs)
    ctx = process_context()
    with log_context(delivery_id=payload.delivery_id, task_id=self.request.id):
        try:
            outcome = deliver_result(payload.delivery_id, ctx)
        except OperationalError:
            raise  # database hiccup: the message is redelivered (acks_late) or re-queued
        except Exception as exc:  # a bug or a corrupt result file: fail it visibly, not loop
            logger.exception("delivery %d failed unexpectedly", payload.delivery_id)
            with transaction(ctx.sessions) as session:
                mark_delivery(
                    session=session,
                    delivery_id=payload.delivery_id,
                    state=DeliveryState.FAILED,
                    reason=f"internal error: {type(exc).__name__}: {exc}"[:2000],
                )
            return
        if outcome.state is DeliveryState.RETRYING and outcome.retry_in_s is not None:
            raise self.retry(countdown=outcome.retry_in_s)
