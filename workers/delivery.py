"""Delivering results to destinations, with the state and reason recorded.

The fast path is the job's own worker sending each result as it is built, over an association kept
open per destination (``workers.result_stream``); ``record_send_outcomes`` records how that went.
What failed there is left RETRYING with its back-off and returned, for the caller to put on the
delivery queue, where ``deliver_result`` sends one delivery per task, as every retry does.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from db.deliveries import claim_delivery, mark_deliveries_sent, mark_delivery
from db.models import Delivery, DeliveryState
from db.session import transaction
from dicom_node.scu import Peer, send_file
from radlight.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from workers.context import WorkerContext

logger = logging.getLogger(__name__)


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
    ctx.store.drop_cached([path])
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


def record_send_outcomes(
    ctx: WorkerContext, attempts: Mapping[int, int], outcomes: Mapping[int, int | DeliveryError]
) -> list[tuple[int, float | None]]:
    """Record how the claimed deliveries ``attempts`` (delivery id → attempts, counting this one)
    went, from ``outcomes`` (delivery id → DIMSE status, or why not): SENT, or RETRYING with its
    back-off, or FAILED with the reason. Returns ``(delivery id, back-off seconds)`` of those to
    queue for a retry. Outcomes of deliveries not claimed here are another sender's to record."""
    sent: dict[int, int] = {}
    retries: list[tuple[int, float | None]] = []
    for delivery_id, outcome in outcomes.items():
        if delivery_id not in attempts:
            continue
        if not isinstance(outcome, DeliveryError):
            sent[delivery_id] = outcome
            continue
        transient = isinstance(outcome, TransientDeliveryError)
        after = _after_failure(
            ctx, delivery_id, attempts[delivery_id], outcome, transient=transient
        )
        if after.state is DeliveryState.RETRYING:
            retries.append((delivery_id, after.retry_in_s))
    if sent:
        with transaction(ctx.sessions) as session:
            mark_deliveries_sent(session=session, statuses=sent)
        logger.info("%d results sent over kept associations", len(sent))
    return retries
