"""How the C-STORE SCU puts a request on the wire: straight onto the socket from the sending thread.

pynetdicom hands every P-DATA-TF PDU of a message to its upper layer's reactor thread (a queue,
an event, the state machine, one socket write per PDU) and the sending thread and the reactor pass
the GIL back and forth for each: at Orthanc's 16 KiB maximum PDU a job's five results are ~950
PDUs, 30 ms of CPU and 25-30 ms of wall time more than writing them ourselves (docs/DECISIONS.md).

:class:`DirectStoreDIMSE` writes a C-STORE request's PDUs itself, gathered into large writes,
where that changes nothing the peer or the state machine could tell apart: the association is
established (Sta6, where sending P-DATA leaves the state as it is), nothing of ours is still queued
for the reactor, and the socket is plain TCP (an SSL object must not be read by the reactor and
written by us at once). Everything else, and every response, goes through pynetdicom as before.
A failed or stalled write closes the connection and tells the state machine (Evt17), as
pynetdicom's own socket does, so the waiting request sees no response and the association is gone;
pynetdicom's blocking write would wait for a peer that stopped reading for ever.
"""

import contextlib
import select
import socket
import struct
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider

_ESTABLISHED = "Sta6"
_P_DATA_TF = 0x04
_WRITE_BYTES = 256 * 1024  # PDUs gathered per socket write
_PDU_HEADER = struct.Struct(">BxLLB")  # PDU type, reserved, PDU length, item length, context ID


def _plain_socket(dul: DULServiceProvider) -> socket.socket | None:
    """The association's TCP socket, when it is a plain one we may write to directly."""
    transport = dul.socket
    sock = getattr(transport, "socket", None) if transport is not None else None
    if type(sock) is not socket.socket:  # None, or an SSLSocket (a subclass)
        return None
    return sock


def _write_all(sock: socket.socket, data: bytes, timeout_s: float | None) -> None:
    """Write ``data`` whole; OSError when the peer is gone or takes nothing for ``timeout_s``."""
    view = memoryview(data)
    while view:
        _, writable, _ = select.select([], [sock], [], timeout_s)
        if not writable:
            raise TimeoutError(f"the peer took no data for {timeout_s} s")
        try:
            sent = sock.send(view, socket.MSG_DONTWAIT)  # never blocks past the select
        except BlockingIOError:
            continue
        view = view[sent:]


class DirectStoreDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, writing C-STORE requests straight onto a plain TCP socket.

    ``write_error`` says why the last direct write failed (the request then gets no response)."""

    write_error: str | None = None

    def send_msg(self, primitive: Any, context_id: int) -> None:
        dul = self.dul
        sock = _plain_socket(dul)
        if (
            not isinstance(primitive, C_STORE)
            or primitive.MessageIDBeingRespondedTo is not None
            or sock is None
            or dul.state_machine.current_state != _ESTABLISHED
            or not dul.to_provider_queue.empty()
        ):
            super().send_msg(primitive, context_id)
            return
        self.write_error = None
        message = C_STORE_RQ()
        message.primitive_to_message(primitive)
        message.context_id = context_id
        evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": message})
        # Our own descriptor of the socket: the reactor closes its one when the peer goes, and a
        # number it freed could be another file's by the time we write (its shutdown still ends
        # our writes).
        try:
            writer = sock.dup()
        except OSError as exc:  # closed already
            self._failed(exc)
            return
        with writer:
            try:
                self._write_pdus(writer, message, context_id)
            except OSError as exc:
                # The stream may end inside a PDU: nothing more can go on this connection.
                with contextlib.suppress(OSError):
                    writer.shutdown(socket.SHUT_RDWR)
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        """Record why, and tell the state machine the connection is gone (as pynetdicom's socket
        does), so the waiting request sees no response and the association ends."""
        self.write_error = str(exc) or type(exc).__name__
        self.dul.event_queue.put("Evt17")

    def _write_pdus(self, sock: socket.socket, message: C_STORE_RQ, context_id: int) -> None:
        """Frame each P-DATA value of ``message`` as its own P-DATA-TF PDU (PS3.8 9.3.5), as
        pynetdicom would, and write them in large gathered writes."""
        pending: list[bytes] = []
        size = 0
        for pdata in message.encode_msg(context_id, self.maximum_pdu_size):
            for item_context, value in pdata.presentation_data_value_list:
                pending.append(
                    _PDU_HEADER.pack(_P_DATA_TF, len(value) + 5, len(value) + 1, item_context)
                )
                pending.append(value)
                size += len(value) + _PDU_HEADER.size
            if size >= _WRITE_BYTES:
                _write_all(sock, b"".join(pending), self.dimse_timeout)
                pending, size = [], 0
        if pending:
            _write_all(sock, b"".join(pending), self.dimse_timeout)


def write_stores_directly(assoc: Any) -> None:
    """Make ``assoc`` (a requestor's pynetdicom Association) write its C-STORE requests itself."""
    assoc.dimse.__class__ = DirectStoreDIMSE
