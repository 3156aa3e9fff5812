"""Delivering results to destinations, with the state and reason recorded.

``deliver_job_results`` is the fast path: the job's own worker sends the job's results over an
association kept open per destination (one handshake, TCP_NODELAY). ``JobDelivery`` runs it on a
thread while the job builds its later results, so that the PACS stores the first ones meanwhile.
What fails there is left RETRYING with its back-off and put on the delivery queue, where
``deliver_result`` sends one delivery per task, as every retry does.
"""

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from db.deliveries import (
    claim_deliveries,
    claim_delivery,
    destinations_of,
    mark_deliveries_sent,
    mark_delivery,
)
from db.models import Delivery, DeliveryState
from db.session import transaction
from dicom_node.scu import Outgoing, Peer, proposed_syntaxes, send_file
from radlight.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from workers.context import WorkerContext

logger = logging.getLogger(__name__)

# Every SOP class and transfer syntax a job's results can be written in (docs/CONFORMANCE.md,
# 3.2): a kept association proposes them all, so that a job whose first results go before the
# rest exist (``JobDelivery``) does not reopen it for its report.
RESULT_CONTEXTS: tuple[tuple[str, list[str]], ...] = (
    (SecondaryCaptureImageStorage, proposed_syntaxes(ExplicitVRLittleEndian)),
    (SecondaryCaptureImageStorage, proposed_syntaxes(JPEGBaseline8Bit)),
    (ComprehensiveSRStorage, proposed_syntaxes(ExplicitVRLittleEndian)),
    (SegmentationStorage, proposed_syntaxes(ExplicitVRLittleEndian)),
    (GrayscaleSoftcopyPresentationStateStorage, proposed_syntaxes(ExplicitVRLittleEndian)),
)


@dataclass(frozen=True)
class DeliveryOutcome:
    state: DeliveryState
    retry_in_s: float | None = None
    reason: str | None = None


def deliver_result(delivery_id: int, ctx: WorkerContext) -> DeliveryOutcome:
    """Send the result; SENT, or RETRYING with a back-off delay, or FAILED with the reason."""
    with transaction(ctx.sessions) as session:
        if not claim_delivery(session=session, delivery_id=delivery_id):
            logger.info("delivery %d is not waiting to be sent; nothing to do", delivery_id)
            current = session.get(Delivery, delivery_id)
            if current is None:
                return DeliveryOutcome(state=DeliveryState.FAILED, reason="no such delivery")
            return DeliveryOutcome(state=current.state, reason="not claimable")
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None  # claimed just now
        peer = Peer.of(delivery.destination)
        path = ctx.store.absolute(delivery.result.relative_path)
        attempts = delivery.attempts
    try:
        status = send_file(peer, path, calling_ae=ctx.settings.result_ae_title)
    except TransientDeliveryError as exc:
        return _after_failure(ctx, delivery_id, attempts, exc, transient=True)
    except PermanentDeliveryError as exc:
        return _after_failure(ctx, delivery_id, attempts, exc, transient=False)
    except OSError as exc:
        error = TransientDeliveryError(f"cannot read or send the result: {exc}")
        return _after_failure(ctx, delivery_id, attempts, error, transient=True)
    with transaction(ctx.sessions) as session:
        mark_delivery(
            session=session, delivery_id=delivery_id, state=DeliveryState.SENT, status=status
        )
    logger.info("delivery %d sent to %s (status 0x%04X)", delivery_id, peer.ae_title, status)
    return DeliveryOutcome(state=DeliveryState.SENT)


def _after_failure(
    ctx: WorkerContext, delivery_id: int, attempts: int, error: DeliveryError, *, transient: bool
) -> DeliveryOutcome:
    max_attempts = ctx.settings.delivery_max_attempts
    if transient and attempts < max_attempts:
        delay = ctx.settings.delivery_backoff_s * 2 ** (attempts - 1)
        state, reason = DeliveryState.RETRYING, f"attempt {attempts}/{max_attempts}: {error}"
    else:
        delay = None
        prefix = f"gave up after {attempts} attempts: " if transient else ""
        state, reason = DeliveryState.FAILED, f"{prefix}{error}"
    with transaction(ctx.sessions) as session:
        mark_delivery(
            session=session,
            delivery_id=delivery_id,
            state=state,
            status=error.status,
            reason=reason,
        )
    logger.warning("delivery %d %s: %s", delivery_id, state.value, reason)
    return DeliveryOutcome(state=state, retry_in_s=delay, reason=reason)


@dataclass(frozen=True)
class _Claimed:
    delivery_id: int
    peer: Peer
    attempts: int
    item: Outgoing


def deliver_job_results(
    deliveries: Sequence[tuple[int, Outgoing]],
    ctx: WorkerContext,
    unreachable: dict[Peer, TransientDeliveryError] | None = None,
) -> list[tuple[int, float | None]]:
    """Send the given deliveries' stored files now, over ``ctx.sender``'s kept associations.

    Returns ``(delivery id, back-off seconds)`` of the deliveries to queue for a retry; the failed
    ones are already recorded (RETRYING or FAILED, with the reason). Once a destination cannot be
    reached, the rest of its deliveries are not tried again: they wait for the retry.
    ``unreachable`` (destination → why) carries that across the calls of one job.
    """
    unreachable = {} if unreachable is None else unreachable
    with transaction(ctx.sessions) as session:
        attempts = claim_deliveries(
            session=session, delivery_ids=[delivery_id for delivery_id, _ in deliveries]
        )
        peers = {
            delivery_id: Peer.of(destination)
            for delivery_id, destination in destinations_of(
                session=session, delivery_ids=list(attempts)
            ).items()
        }
    claimed = [
        _Claimed(delivery_id, peers[delivery_id], attempts[delivery_id], item)
        for delivery_id, item in deliveries
        if delivery_id in attempts
    ]
    for peer in {claim.peer for claim in claimed}:
        ctx.sender.expect_contexts(peer, RESULT_CONTEXTS)
        ctx.sender.expect(peer, [c.item for c in claimed if c.peer == peer])
    sent: list[tuple[int, int]] = []
    retries: list[tuple[int, float | None]] = []
    for claim in claimed:
        error: DeliveryError | None = unreachable.get(claim.peer)
        if error is None:
            try:
                sent.append((claim.delivery_id, ctx.sender.send(claim.peer, claim.item)))
                continue
            except DeliveryError as exc:
                error = exc
            except OSError as exc:
                error = TransientDeliveryError(f"cannot send the result: {exc}")
            if isinstance(error, TransientDeliveryError) and error.status is None:
                unreachable[claim.peer] = error  # no association at all: do not knock again
        transient = isinstance(error, TransientDeliveryError)
        outcome = _after_failure(ctx, claim.delivery_id, claim.attempts, error, transient=transient)
        if outcome.state is DeliveryState.RETRYING:
            retries.append((claim.delivery_id, outcome.retry_in_s))
    if sent:
        with transaction(ctx.sessions) as session:
            mark_deliveries_sent(session=session, statuses=dict(sent))
        logger.info("%d results sent over kept associations", len(sent))
    return retries


class JobDelivery:
    """Delivers one job's results as the job records them.

    With ``delivery_inline``, each batch handed to :meth:`add` (deliveries already committed) is
    sent by one thread, in order, over the process's kept associations, while the job goes on
    building: the PACS stores an image while the next is made. Measured in one process
    (docs/PERFORMANCE.md), building a job's results with its images sent behind took 214 ms
    against 289 ms one after the other; the sending thread needs the GIL only between socket
    writes. Without ``delivery_inline`` each delivery is queued as a task when added.

    :meth:`finish` waits for the thread and queues what failed for a retry; as a context manager
    it also finishes when the job raised, so what was recorded is still sent or queued.
    """

    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx
        self._batches: queue.SimpleQueue[list[tuple[int, Outgoing]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._retries: list[tuple[int, float | None]] = []
        self._unreachable: dict[Peer, TransientDeliveryError] = {}
        self._finished = False

    def add(self, deliveries: Sequence[tuple[int, Outgoing]]) -> None:
        """Send (or queue) ``deliveries``, whose rows are committed."""
        if not deliveries:
            return
        if self._finished:
            raise RuntimeError("this job's delivery is finished")
        if not self._ctx.settings.delivery_inline:
            self._queue([(delivery_id, None) for delivery_id, _ in deliveries])
            return
        if self._thread is None:
            # The thread logs with the job's context (job, study), as the job does.
            context = contextvars.copy_context()
            self._thread = threading.Thread(
                target=context.run, args=(self._send_batches,), name="job-delivery", daemon=True
            )
            self._thread.start()
        self._batches.put(list(deliveries))

    def finish(self) -> float:
        """Wait until every batch had its first attempt, queue the retries; returns the
        milliseconds waited (the time delivery added after the job's build)."""
        start = time.perf_counter()
        if self._finished:
            return 0.0
        self._finished = True
        if self._thread is not None:
            self._batches.put(None)
            self._thread.join()
        self._queue(self._retries)
        return (time.perf_counter() - start) * 1000.0

    @property
    def sending(self) -> bool:
        """Whether any batch went to the sending thread (``delivery_inline``)."""
        return self._thread is not None

    def __enter__(self) -> "JobDelivery":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish()

    def _send_batches(self) -> None:
        while (batch := self._batches.get()) is not None:
            try:
                self._retries.extend(deliver_job_results(batch, self._ctx, self._unreachable))
            except Exception:  # the database or a bug: the delivery tasks try again
                logger.exception("could not send %d results now; queueing them", len(batch))
                self._retries.extend((delivery_id, None) for delivery_id, _ in batch)

    def _queue(self, deliveries: Sequence[tuple[int, float | None]]) -> None:
        for delivery_id, countdown in deliveries:
            try:
                self._ctx.producer.enqueue_delivery(delivery_id, countdown=countdown)
            except Exception as exc:  # noqa: BLE001 - any broker error; the dispatcher re-queues
                logger.warning("could not queue delivery %d: %s", delivery_id, exc)
