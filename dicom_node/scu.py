"""C-STORE SCU: send result files to a destination and classify what went wrong.

Transient failures (connection refused, association rejected transiently or aborted, out of
resources 0xA7xx, processing failure 0x0110) are worth a retry; the rest (a permanent association
rejection, 0xA9xx, 0xCxxx, ...) are permanent and recorded as such.
"""

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom import AE

from db.models import Destination
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
class Peer:
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


def send_file(peer: Peer, path: Path, *, calling_ae: str, timeout_s: float = 30.0) -> int:
    """Send one Part-10 file; returns its DIMSE status or raises a DeliveryError."""
    dataset = dcmread(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    sop_class = str(dataset.SOPClassUID)
    syntaxes = proposed_syntaxes(UID(str(dataset.file_meta.TransferSyntaxUID)))
    ae.add_requested_context(sop_class, syntaxes)
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
    try:
        if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
            raise PermanentDeliveryError(
                f"{peer.ae_title} does not accept SOP class {sop_class} "
                f"in transfer syntax {' or '.join(syntaxes)}"
            )
        response = assoc.send_c_store(dataset)
        if not response or "Status" not in response:
            raise TransientDeliveryError("no C-STORE response (association aborted or timed out)")
        status = int(response.Status)
    finally:
        if assoc.is_established:
            assoc.release()
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
