"""C-ECHO SCU: is a destination reachable and willing to talk to us? Answers, never raises.

Used by the API's "echo test" on a destination, so it runs on a web request's thread: every
timeout is short, and the outcome (ok, DIMSE status, why not, how long) is returned as data.
"""

import threading
import time
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.scu import Peer
from dicom_node.status import STATUS_SUCCESS
from radlight.errors import ConfigurationError

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class EchoOutcome:
    ok: bool
    status: int | None  # the C-ECHO response status, when one came
    error: str | None  # why it failed, when it did
    elapsed_s: float


def _rejection(peer: Peer, primitive: object) -> str:
    return (
        f"association rejected by {peer.ae_title}: "
        f"{getattr(primitive, 'result_str', '?')}, source {getattr(primitive, 'source_str', '?')}, "
        f"reason {getattr(primitive, 'reason_str', '?')}"
    )


def echo(peer: Peer, *, calling_ae: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> EchoOutcome:
    """Associate with ``peer`` as ``calling_ae``, send one C-ECHO, release."""
    started = time.monotonic()

    def done(ok: bool, status: int | None = None, error: str | None = None) -> EchoOutcome:
        return EchoOutcome(ok, status, error, time.monotonic() - started)

    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout_s
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    connected = threading.Event()
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, lambda event: connected.set())]
    try:
        tls_args = peer.tls_args()
    except ConfigurationError as exc:
        return done(False, error=f"TLS settings: {exc}")
    try:
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            evt_handlers=handlers,
            tls_args=tls_args,
        )
    except (OSError, ValueError) as exc:
        return done(False, error=f"cannot reach {peer.host}:{peer.port}: {exc}")
    if not assoc.is_established:
        if not connected.is_set():
            return done(
                False,
                error=f"cannot connect to {peer.host}:{peer.port} "
                "(refused, unreachable, unknown host or timed out"
                + (", or the TLS handshake failed)" if peer.tls else ")"),
            )
        if assoc.is_rejected:
            return done(False, error=_rejection(peer, assoc.acceptor.primitive))
        return done(
            False,
            error=f"{peer.ae_title} at {peer.host}:{peer.port} aborted or did not answer the "
            "association request",
        )
    try:
        response = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if not response or "Status" not in response:
        return done(False, error="no C-ECHO response (association aborted or timed out)")
    status = int(response.Status)
    if status != STATUS_SUCCESS:
        return done(False, status, f"C-ECHO answered with status 0x{status:04X}")
    return done(True, status)
