"""How C-STORE messages go on the wire: straight onto the socket from the thread that makes them.

pynetdicom hands every P-DATA-TF PDU of a message to its upper layer's reactor thread (a queue,
an event, the state machine, one socket write per PDU) and the sending thread and the reactor pass
the GIL back and forth for each: at Orthanc's 16 KiB maximum PDU a job's five results are ~950
PDUs, 30 ms of CPU and 25-30 ms of wall time more than writing them ourselves (docs/DECISIONS.md).

:class:`DirectStoreDIMSE` writes a C-STORE request's PDUs itself, gathered into large writes,
where that changes nothing the peer or the state machine could tell apart: the association is
established (Sta6, where sending P-DATA leaves the state as it is), nothing of ours is still queued
for the reactor, and the socket is plain TCP (an SSL object must not be read by the reactor and
written by us at once). Everything else goes through pynetdicom as before.

The node's C-STORE responses (:class:`NodeDIMSE`) are encoded here, to pynetdicom's bytes, and
written the same way: pydicom's encoding of the seven-element command set and the hand-off to the
reactor were about a tenth of the node's CPU per small instance (docs/PERFORMANCE.md). A response
with more than those elements (an error comment), or with a DIMSE-sent event handler bound, is
left to pynetdicom; where the socket may not be written directly (TLS), the encoded PDU goes
through the reactor.
A failed or stalled write closes the connection and tells the state machine (Evt17), as
pynetdicom's own socket does, so the waiting request sees no response and the association is gone;
pynetdicom's blocking write would wait for a peer that stopped reading for ever.
"""

import contextlib
import select
import socket
import struct
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

_ESTABLISHED = "Sta6"
_P_DATA_TF = 0x04
_WRITE_BYTES = 256 * 1024  # PDUs gathered per socket write
_PDU_HEADER = struct.Struct(">BxLLB")  # PDU type, reserved, PDU length, item length, context ID
# Command set elements, Implicit VR Little Endian (PS3.7 6.3.1): group, element, length, value
_UL_ELEMENT = struct.Struct("<HHLL")
_US_ELEMENT = struct.Struct("<HHLH")
_TAG_AND_LENGTH = struct.Struct("<HHL")
_C_STORE_RSP = 0x8001  # Command Field
_NO_DATA_SET = 0x0101  # Command Data Set Type
_LAST_COMMAND_FRAGMENT = b"\x03"  # message control header: command, last fragment


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


def _writable_socket(dul: DULServiceProvider) -> socket.socket | None:
    """The socket to write a message to directly, if that changes nothing the peer or the state
    machine could tell apart: plain TCP, the association established, nothing queued."""
    sock = _plain_socket(dul)
    if (
        sock is None
        or dul.state_machine.current_state != _ESTABLISHED
        or not dul.to_provider_queue.empty()
    ):
        return None
    return sock


class DirectStoreDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, writing C-STORE requests straight onto a plain TCP socket.

    ``write_error`` says why the last direct write failed (the request then gets no response)."""

    write_error: str | None = None

    def send_msg(self, primitive: Any, context_id: int) -> None:
        sock = _writable_socket(self.dul)
        if (
            not isinstance(primitive, C_STORE)
            or primitive.MessageIDBeingRespondedTo is not None
            or sock is None
        ):
            super().send_msg(primitive, context_id)
            return
        message = C_STORE_RQ()
        message.primitive_to_message(primitive)
        message.context_id = context_id
        evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": message})
        self._write(sock, lambda writer: self._write_pdus(writer, message, context_id))

    def _write(self, sock: socket.socket, write: Callable[[socket.socket], None]) -> None:
        """Run ``write`` on a descriptor of our own for ``sock``: the reactor closes its one when
        the peer goes, and a number it freed could be another file's by the time we write (its
        shutdown still ends our writes)."""
        self.write_error = None
        try:
            writer = sock.dup()
        except OSError as exc:  # closed already
            self._failed(exc)
            return
        with writer:
            try:
                write(writer)
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
                pending.append(_p_data_tf_header(item_context, value))
                pending.append(value)
                size += len(value) + _PDU_HEADER.size
            if size >= _WRITE_BYTES:
                _write_all(sock, b"".join(pending), self.dimse_timeout)
                pending, size = [], 0
        if pending:
            _write_all(sock, b"".join(pending), self.dimse_timeout)


def _p_data_tf_header(context_id: int, value: bytes) -> bytes:
    """The header of a P-DATA-TF PDU carrying one presentation data value (PS3.8 9.3.5)."""
    return _PDU_HEADER.pack(_P_DATA_TF, len(value) + 5, len(value) + 1, context_id)


def _uid_element(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"  # UI values are padded to even length with NUL
    return _TAG_AND_LENGTH.pack(0x0000, element, len(value)) + value


def store_response_value(primitive: C_STORE) -> bytes | None:
    """The presentation data value (message control header and command set) of a C-STORE
    response with the seven elements every response of the node has (PS3.7 9.3.1.2), byte for
    byte as pynetdicom encodes it; None for one with anything else set (an error comment,
    offending elements) or without a UID."""
    message_id = primitive.MessageIDBeingRespondedTo
    status = primitive.Status
    sop_class = primitive.AffectedSOPClassUID
    sop_instance = primitive.AffectedSOPInstanceUID
    if (
        message_id is None
        or not isinstance(status, int)
        or not sop_class
        or not sop_instance
        or primitive.ErrorComment is not None
        or primitive.OffendingElement is not None
    ):
        return None
    elements = b"".join(
        (
            _uid_element(0x0002, sop_class),
            _US_ELEMENT.pack(0x0000, 0x0100, 2, _C_STORE_RSP),
            _US_ELEMENT.pack(0x0000, 0x0120, 2, message_id),
            _US_ELEMENT.pack(0x0000, 0x0800, 2, _NO_DATA_SET),
            _US_ELEMENT.pack(0x0000, 0x0900, 2, status),
            _uid_element(0x1000, sop_instance),
        )
    )
    return _LAST_COMMAND_FRAGMENT + _UL_ELEMENT.pack(0x0000, 0x0000, 4, len(elements)) + elements


class NodeDIMSE(DirectStoreDIMSE):
    """The node's DIMSE provider: C-STORE responses encoded by :func:`store_response_value` and
    written straight onto a plain TCP socket, or handed to the reactor where that is not allowed."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        value = (
            store_response_value(primitive)
            if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None
            else None
        )
        if (
            value is None
            or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
            or 0 < self.maximum_pdu_size < len(value) + _PDU_HEADER.size
        ):
            # pynetdicom's path: another message, an observer, or a peer taking only tiny PDUs
            super().send_msg(primitive, context_id)
            return
        sock = _writable_socket(self.dul)
        if sock is None:
            through_reactor = P_DATA()
            # The setter checks for [int, bytes] lists; its annotation says tuples.
            through_reactor.presentation_data_value_list = [[context_id, value]]  # type: ignore[list-item]
            self.dul.send_pdu(through_reactor)
            return
        pdu = _p_data_tf_header(context_id, value) + value
        self._write(sock, lambda writer: _write_all(writer, pdu, self.dimse_timeout))


def write_stores_directly(assoc: Any) -> None:
    """Make ``assoc`` (a requestor's pynetdicom Association) write its C-STORE requests itself."""
    assoc.dimse.__class__ = DirectStoreDIMSE


def write_store_responses_directly(assoc: Any) -> None:
    """Make ``assoc`` (an association the node accepted) encode and write its C-STORE responses
    itself."""
    assoc.dimse.__class__ = NodeDIMSE
