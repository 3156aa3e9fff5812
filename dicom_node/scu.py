"""C-STORE SCU: send result files to a destination and classify what went wrong.

Transient failures (connection refused, association rejected transiently or aborted, out of
resources 0xA7xx, processing failure 0x0110) are worth a retry; the rest (a permanent association
rejection, 0xA9xx, 0xCxxx, ...) are permanent and recorded as such.
"""

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.transport import AddressInformation, AssociationSocket

from db.models import Destination
from dicom_node.reactors import waking_reactors
from dicom_node.sending import write_stores_directly
from dicom_node.status import (
    TRANSIENT_FAILURES,
    is_out_of_resources,
    is_success_or_warning,
)
from dicom_node.tls import TlsClient, client_context
from radlight.errors import ConfigurationError, PermanentDeliveryError, TransientDeliveryError

logger = logging.getLogger(__name__)

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
REJECTED_PERMANENT = 0x01  # A-ASSOCIATE-RJ Result (PS3.8 9.3.4); 0x02 is rejected-transient


@dataclass(frozen=True)
class Peer:  # hashable: the key of a kept association
    host: str
    port: int
    ae_title: str
    tls: TlsClient | None = None  # None: plain TCP

    @classmethod
    def of(cls, destination: Destination) -> "Peer":
        """The peer a destination row describes, with its TLS settings when it has them on."""
        tls = None
        if destination.tls_enabled:
            tls = TlsClient(
                ca_file=destination.tls_ca_file,
                cert_file=destination.tls_cert_file,
                key_file=destination.tls_key_file,
            )
        return cls(destination.host, destination.port, destination.ae_title, tls)

    def tls_args(self) -> tuple[ssl.SSLContext, str] | None:
        """pynetdicom's ``tls_args``; raises ConfigurationError when a file cannot be used."""
        if self.tls is None:
            return None
        return client_context(self.tls), self.host


@dataclass(frozen=True)
class Outgoing:
    """A stored Part-10 file to send, with what choosing a presentation context needs (read from
    its file meta, so the data set itself is never decoded to send it)."""

    path: Path
    sop_class_uid: str
    transfer_syntax: UID

    @classmethod
    def of_file(cls, path: Path) -> "Outgoing":
        meta = read_file_meta_info(path)
        return cls(path, str(meta.MediaStorageSOPClassUID), UID(str(meta.TransferSyntaxUID)))


def proposed_syntaxes(syntax: UID) -> list[str]:
    """The transfer syntaxes to offer for a file written in ``syntax``.

    An uncompressed file can go in any uncompressed syntax (pynetdicom re-encodes it). A
    compressed one (a JPEG baseline Secondary Capture) can only go as it is: pynetdicom does not
    decompress to send, so offering the uncompressed syntaxes beside it in the same context would
    let the peer accept one of those and leave the C-STORE with no usable context.
    """
    if syntax.is_compressed:
        return [str(syntax)]
    return list(dict.fromkeys([str(syntax), EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]))


class NoDelayAE(AE):
    """An AE whose sockets have TCP_NODELAY set: pynetdicom leaves Nagle's algorithm on, so every
    small C-STORE (an SR) would wait for the peer's delayed ACK, about 40 ms on Linux."""

    def _create_socket(
        self,
        assoc: Association,
        address: AddressInformation,
        tls_args: tuple[SSLContext, str] | None,
    ) -> AssociationSocket:
        self._prepare(assoc)
        sock = super()._create_socket(assoc, address, tls_args)
        if sock.socket is not None:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _prepare(self, assoc: Association) -> None:
        """Adjust a new association before its threads start."""


class SenderAE(NoDelayAE):
    """The SCU's AE: TCP_NODELAY, C-STORE requests written by the sending thread
    (:mod:`dicom_node.sending`), and reactor threads that wait instead of polling when idle
    (:mod:`dicom_node.reactors`)."""

    def _prepare(self, assoc: Association) -> None:
        waking_reactors(assoc)
        write_stores_directly(assoc)


def _associate(
    peer: Peer, *, calling_ae: str, timeout_s: float, contexts: Mapping[str, Sequence[str]]
) -> Association:
    """An established association proposing ``contexts`` (SOP class → transfer syntaxes, one
    context per compressed syntax), or a DeliveryError saying why not."""
    ae = SenderAE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    for sop_class, syntaxes in contexts.items():
        uncompressed = [s for s in syntaxes if not UID(s).is_compressed]
        if uncompressed:
            ae.add_requested_context(sop_class, uncompressed)
        for syntax in syntaxes:
            if UID(syntax).is_compressed:
                ae.add_requested_context(sop_class, [syntax])
    try:
        tls_args = peer.tls_args()
    except ConfigurationError as exc:
        raise PermanentDeliveryError(f"TLS settings of {peer.ae_title}: {exc}") from exc
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
    except OSError as exc:
        raise TransientDeliveryError(f"cannot reach {peer.host}:{peer.port}: {exc}") from exc
    if not assoc.is_established:
        if assoc.is_rejected:
            primitive = assoc.acceptor.primitive
            result = getattr(primitive, "result", None)
            why = (
                f"association rejected by {peer.ae_title} (result {result}, "
                f"source {getattr(primitive, 'result_source', None)}, "
                f"reason {getattr(primitive, 'diagnostic', None)})"
            )
            if result == REJECTED_PERMANENT:
                raise PermanentDeliveryError(why)
            raise TransientDeliveryError(why)
        raise TransientDeliveryError(
            f"no association with {peer.ae_title} at {peer.host}:{peer.port}"
            + (" (TLS handshake or certificate refused?)" if peer.tls else "")
        )
    return assoc


_CHUNKED_SEND_LOCK = threading.Lock()


def _context_syntax(assoc: Association, item: Outgoing) -> UID | None:
    """The transfer syntax of the accepted context that will carry ``item``: its own when the peer
    took it, else an uncompressed one that pynetdicom can re-encode an uncompressed file into
    (never from or to a compressed one); None when no context can."""
    convertible: UID | None = None
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax != item.sop_class_uid:
            continue
        accepted = UID(str(cx.transfer_syntax[0]))
        if accepted == item.transfer_syntax:
            return accepted
        if not (item.transfer_syntax.is_compressed or accepted.is_compressed):
            convertible = convertible or accepted
    return convertible


def _send_c_store(assoc: Association, item: Outgoing, syntax: UID) -> Dataset:
    """The C-STORE of ``item``: streamed from its file as it is (pynetdicom's chunked send, which
    neither decodes nor re-encodes the data set: a 14-finding SR costs ~65 ms to encode) when the
    context's syntax is the file's, else decoded and re-encoded by pynetdicom."""
    if syntax != item.transfer_syntax:
        return assoc.send_c_store(dcmread(item.path))
    # pynetdicom reads the switch at send time; it is process-wide, so set and restore it here.
    with _CHUNKED_SEND_LOCK:
        before = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            return assoc.send_c_store(item.path)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = before


def _store(peer: Peer, assoc: Association, item: Outgoing) -> int:
    """One C-STORE on an established association: its status, or a DeliveryError."""
    syntax = _context_syntax(assoc, item)
    if syntax is None:
        raise PermanentDeliveryError(
            f"{peer.ae_title} does not accept SOP class {item.sop_class_uid} "
            f"in transfer syntax {' or '.join(proposed_syntaxes(item.transfer_syntax))}"
        )
    response = _send_c_store(assoc, item, syntax)
    if not response or "Status" not in response:
        write_error = getattr(assoc.dimse, "write_error", None)
        raise TransientDeliveryError(
            "no C-STORE response (association aborted or timed out)"
            + (f": sending failed: {write_error}" if write_error else "")
        )
    status = int(response.Status)
    if is_success_or_warning(status):
        return status
    if is_out_of_resources(status) or status in TRANSIENT_FAILURES:
        raise TransientDeliveryError(
            f"{peer.ae_title} is out of resources or failed to process (0x{status:04X})",
            status=status,
        )
    raise PermanentDeliveryError(
        f"{peer.ae_title} refused the instance with status 0x{status:04X}", status=status
    )


def send_file(peer: Peer, path: Path, *, calling_ae: str, timeout_s: float = 30.0) -> int:
    """Send one Part-10 file on an association of its own; its DIMSE status or a DeliveryError."""
    item = Outgoing.of_file(path)
    contexts = {item.sop_class_uid: proposed_syntaxes(item.transfer_syntax)}
    assoc = _associate(peer, calling_ae=calling_ae, timeout_s=timeout_s, contexts=contexts)
    try:
        return _store(peer, assoc, item)
    finally:
        if assoc.is_established:
            assoc.release()


def _union(first: Sequence[str], second: Sequence[str]) -> list[str]:
    """Both lists' items in order of first appearance, each once."""
    return list(dict.fromkeys([*first, *second]))


@dataclass
class _Kept:
    assoc: Association
    contexts: dict[str, list[str]]
    last_used: float


class KeptAssociations:
    """Associations kept open per destination, so a job's results (and the next job's) go without
    a new association each: one handshake per destination, not per object.

    An association idle for ``idle_s`` is released before reuse (peers time idle ones out, Orthanc
    after 30 s); one that the peer dropped is reopened once. A SOP class or transfer syntax not yet
    proposed to a peer reopens its association with the union of what was asked for. Thread-safe
    per instance (one lock); a worker process keeps one instance.
    """

    def __init__(self, *, calling_ae: str, timeout_s: float = 30.0, idle_s: float = 20.0) -> None:
        self.calling_ae = calling_ae
        self.timeout_s = timeout_s
        self.idle_s = idle_s
        self.opened = 0  # associations opened so far (the benchmarks print it)
        self._kept: dict[Peer, _Kept] = {}
        self._wanted: dict[Peer, dict[str, list[str]]] = {}
        self._lock = threading.Lock()

    def expect(self, peer: Peer, kinds: Iterable[tuple[str, UID]]) -> None:
        """Say what is about to be sent to ``peer`` (SOP class and transfer syntax of each kind
        of object), so that an association opened for the first of them proposes them all at
        once, not one reopened association per new kind."""
        with self._lock:
            wanted = self._wanted.setdefault(peer, {})
            for sop_class, syntax in kinds:
                wanted[sop_class] = _union(wanted.get(sop_class, []), proposed_syntaxes(syntax))

    def send(self, peer: Peer, item: Outgoing) -> int:
        """C-STORE ``item`` to ``peer``; its status, or a DeliveryError (as :func:`send_file`)."""
        with self._lock:
            kept, reused = self._association(peer, item)
            try:
                return _store(peer, kept.assoc, item)
            except TransientDeliveryError:
                alive = kept.assoc.is_established
                if not alive:
                    self._drop(peer)
                if alive or not reused:
                    raise
            # The peer had closed a reused association: one more try on a fresh one.
            kept, _ = self._association(peer, item)
            try:
                return _store(peer, kept.assoc, item)
            except TransientDeliveryError:
                if not kept.assoc.is_established:
                    self._drop(peer)
                raise

    def _association(self, peer: Peer, item: Outgoing) -> tuple[_Kept, bool]:
        sop_class, syntaxes = item.sop_class_uid, proposed_syntaxes(item.transfer_syntax)
        kept = self._kept.get(peer)
        now = time.monotonic()
        if kept is not None:
            fresh = now - kept.last_used < self.idle_s and kept.assoc.is_established
            known = set(syntaxes) <= set(kept.contexts.get(sop_class, ()))
            if fresh and known:
                kept.last_used = now
                return kept, True
            contexts = kept.contexts
            self._drop(peer)
        else:
            contexts = {}
        merged = {k: list(v) for k, v in contexts.items()}
        for wanted_class, wanted_syntaxes in self._wanted.get(peer, {}).items():
            merged[wanted_class] = _union(merged.get(wanted_class, []), wanted_syntaxes)
        merged[sop_class] = _union(merged.get(sop_class, []), syntaxes)
        assoc = _associate(
            peer, calling_ae=self.calling_ae, timeout_s=self.timeout_s, contexts=merged
        )
        self.opened += 1
        kept = _Kept(assoc, merged, now)
        self._kept[peer] = kept
        return kept, False

    def _drop(self, peer: Peer) -> None:
        kept = self._kept.pop(peer, None)
        if kept is not None and kept.assoc.is_established:
            kept.assoc.release()

    def close(self) -> None:
        """Release every kept association."""
        with self._lock:
            for peer in list(self._kept):
                self._drop(peer)
