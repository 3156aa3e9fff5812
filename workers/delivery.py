"""Delivering results to destinations, with the state and reason recorded.

``deliver_job_results`` is the fast path: the job's own worker sends every result of the job at
once, over an association kept open per destination (one handshake, TCP_NODELAY). What fails there
is left RETRYING with its back-off and returned, for the caller to put on the delivery queue, where
``deliver_result`` sends one delivery per task, as every retry does.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from db.deliveries import (
    claim_deliveries,
    claim_delivery,
    destinations_of,
    mark_deliveries_sent,
    mark_delivery,
)
from db.models import Delivery, DeliveryState
from db.session import transaction
from dicom_node.scu import Outgoing, Peer, send_file
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


@dataclass(frozen=True)
class _Claimed:
    delivery_id: int
    peer: Peer
    attempts: int
    item: Outgoing


def deliver_job_results(
    deliveries: Sequence[tuple[int, Outgoing]], ctx: WorkerContext
) -> list[tuple[int, float | None]]:
    """Send the given deliveries' stored files now, over ``ctx.sender``'s kept associations.

    Returns ``(delivery id, back-off seconds)`` of the deliveries to queue for a retry; the failed
    ones are already recorded (RETRYING or FAILED, with the reason). Once a destination cannot be
    reached, the rest of its deliveries are not tried again in this call: they wait for the retry.
    """
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
        ctx.sender.expect(peer, [c.item for c in claimed if c.peer == peer])
    sent: list[tuple[int, int]] = []
    retries: list[tuple[int, float | None]] = []
    unreachable: dict[Peer, TransientDeliveryError] = {}
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
