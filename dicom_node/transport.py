"""Under the node's AE: how accepted connections are read, and their socket options.

Accepted sockets get TCP_NODELAY (small responses are not held back by Nagle's algorithm) and, for
several listener processes on one port, SO_REUSEPORT. PDUs are read into one buffer and P-DATA
fragments passed on as views of it; pynetdicom reads 4 KiB at a time and copies each fragment
three times. These hook pynetdicom 3 internals (docs/DECISIONS.md); tests/dicom_node covers each.
"""

import copy
import socket
import struct
from typing import Any, cast

from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.reactors import WakingDUL, waking_reactors
from dicom_node.sending import write_store_responses_directly

_P_DATA_TF_TYPE = b"\x04"


class _Contexts(list[PresentationContext]):
    """The supported contexts, copied for each association without ``copy.deepcopy``: pynetdicom
    deep-copies them per association, 80 ms of CPU for ~170 SOP classes x 45 syntaxes. Their
    values are strings and UIDs (immutable), so a copy of each context and its list suffices."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            duplicate = copy.copy(context)
            duplicate._transfer_syntax = list(context._transfer_syntax)
            copies.append(duplicate)
        return copies


class NodeServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on every accepted socket, and SO_REUSEPORT if the AE asks for it, so
    that several node processes can listen on one port and the kernel spreads associations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = _Contexts(self.contexts)

    def server_bind(self) -> None:
        if getattr(self.ae, "reuse_port", False):
            cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


class NodeSocket(AssociationSocket):
    """Reads each PDU straight into one buffer in as few system calls as the kernel allows;
    pynetdicom reads 4 KiB at a time and appends, some 2,000 Python steps per 8 MB image."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        read = 0
        with memoryview(buffer) as view:
            while read < nr_bytes:
                count = sock.recv_into(view[read:])
                if not count:  # connection closed: the caller sees the short read
                    break
                read += count
        if read < nr_bytes:
            del buffer[read:]
        return buffer


class _ReceivedPData(P_DATA_TF):
    """A received P-DATA-TF whose fragments are views of the received PDU, not copies."""

    def __init__(self, primitive: P_DATA) -> None:
        super().__init__()
        self._primitive = primitive

    def to_primitive(self) -> P_DATA:
        return self._primitive


def _p_data_views(pdu: memoryview) -> P_DATA:
    """The (context id, fragment) list of a P-DATA-TF PDU, each fragment a view into ``pdu``."""
    fragments = []
    offset, end = 6, len(pdu)
    while offset < end:
        if offset + 6 > end:
            raise ValueError("P-DATA-TF item header runs past the PDU")
        (length,) = struct.unpack_from(">L", pdu, offset)
        if length < 2 or offset + 4 + length > end:
            raise ValueError(f"P-DATA-TF item of {length} bytes does not fit the PDU")
        fragments.append([pdu[offset + 4], pdu[offset + 5 : offset + 4 + length]])
        offset += 4 + length
    primitive = P_DATA()
    # The public setter insists on bytes; the DIMSE decoder only indexes, slices and writes them.
    primitive._presentation_data_value_list = fragments  # type: ignore[assignment]
    return primitive


class NodeDUL(WakingDUL):
    """The upper layer (woken by its work, :mod:`dicom_node.reactors`), decoding P-DATA-TF PDUs
    without copying their data: pynetdicom copies each fragment three times (bytes(), the item
    decoder, the DIMSE slice) before writing."""

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        if bytestream[:1] != _P_DATA_TF_TYPE:
            return cast(tuple[Any, str], super()._decode_pdu(bytestream))
        return _ReceivedPData(_p_data_views(memoryview(bytestream))), "Evt10"


class NodeRequestHandler(RequestHandler):
    """pynetdicom's handler for an accepted connection, reading through :class:`NodeSocket`
    and :class:`NodeDUL`, its reactor threads woken by their work, its C-STORE responses
    written by :class:`dicom_node.sending.NodeDIMSE`."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        assoc.dul.socket.__class__ = NodeSocket
        waking_reactors(assoc, NodeDUL)
        write_store_responses_directly(assoc)
        return assoc
