"""The storage SCP: C-ECHO and C-STORE handlers and the AE that serves them.

A C-STORE answers Success only after the raw bytes are fsynced in the store and recorded in the
database. Handlers never raise: every failure becomes a named status, a log line and, where the
database is reachable, an IngestFailure row with the reason.

Data sets are received in chunks straight to a file in the store's ``incoming/`` folder
(pynetdicom's ``STORE_RECV_CHUNKED_DATASET``, see ``incoming``), checked by reading their header
only, then renamed into place: no Python code touches the pixel bytes. The sockets and PDU reading
under the AE are in ``transport``.
"""

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    evt,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import ReceivedInstance, record_ingest_failure, record_received
from db.session import transaction
from dicom_node.allow_list import CallingAEAllowList
from dicom_node.headers import InstanceHeader, read_header_file
from dicom_node.incoming import received_file
from dicom_node.status import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_MISSING_REQUIRED_ATTRIBUTE,
    STATUS_OUT_OF_RESOURCES,
    STATUS_OUT_OF_RESOURCES_TOO_LARGE,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
)
from dicom_node.store import InstanceStore, StoredFile
from dicom_node.transport import NodeRequestHandler, NodeServer
from radlight.errors import (
    InstanceTooLargeError,
    InvalidInstanceError,
    MissingAttributeError,
    SOPClassMismatchError,
    StoreError,
    StoreFullError,
)
from radlight.logs import log_context
from radlight.settings import Settings

logger = logging.getLogger(__name__)

# pynetdicom would otherwise log every dataset and identifier it handles (patient data).
_config.LOG_HANDLER_LEVEL = "none"
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# Received data sets go to a file as they arrive, never into one bytes object (see the docstring).
_config.STORE_RECV_CHUNKED_DATASET = True


RECORD_ATTEMPTS = 3
# A-ASSOCIATE-RJ fields (PS3.8 9.3.4): rejected-transient, by the service user, no reason given.
ASSOCIATION_REJECTED_TRANSIENT = 0x02
REJECT_SOURCE_SERVICE_USER = 0x01
REJECT_NO_REASON_GIVEN = 0x01


@dataclass(frozen=True)
class StoreContext:
    """What the C-STORE handler needs, injected once when the server starts."""

    store: InstanceStore
    engine: Engine  # instances are recorded on it directly (db.ingest.record_received)
    sessions: sessionmaker[Session]  # refusals
    max_instance_bytes: int
    min_free_bytes: int = 0
    # Called after each instance is recorded (wakes the node's assembler; never raises).
    on_recorded: Callable[[], None] | None = None


def handle_echo(event: Event) -> int:
    return STATUS_SUCCESS


def _status_for(error: InvalidInstanceError) -> int:
    if isinstance(error, SOPClassMismatchError):
        return STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS
    if isinstance(error, MissingAttributeError):
        return STATUS_MISSING_REQUIRED_ATTRIBUTE
    if isinstance(error, InstanceTooLargeError):
        return STATUS_OUT_OF_RESOURCES_TOO_LARGE
    return STATUS_CANNOT_UNDERSTAND


def _refuse(
    ctx: StoreContext,
    *,
    status: int,
    reason: str,
    calling_ae: str,
    request_sop_class: str | None,
    request_sop_instance: str | None,
    received: Path | None,
) -> int:
    """Record a refusal (the received file kept in quarantine) and return its status; never
    raises. Callers pass ``received=None`` where keeping the bytes would itself be the harm (an
    instance over the size limit); a deflate bomb's few received bytes are kept like any other."""
    quarantine = None
    if received is not None:
        quarantine = ctx.store.quarantine_file(received, reason_code=f"{status:04X}")
    logger.warning("refused C-STORE with status 0x%04X: %s", status, reason)
    try:
        with transaction(ctx.sessions) as session:
            record_ingest_failure(
                session=session,
                status=status,
                reason=reason,
                calling_ae=calling_ae,
                sop_class_uid=(request_sop_class or "")[:64] or None,
                sop_instance_uid=(request_sop_instance or "")[:64] or None,
                quarantine_path=quarantine,
            )
    except SQLAlchemyError:
        logger.exception("could not record the refusal in the database")
    return status


def _record(ctx: StoreContext, received: ReceivedInstance) -> None:
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            record_received(received, engine=ctx.engine)
            return
        except IntegrityError:
            # Two associations created the same study or series at once; the retry finds it.
            if attempt == RECORD_ATTEMPTS:
                raise


def handle_store(event: Event, ctx: StoreContext) -> int:
    """Check, persist, record, answer. Runs on the association's thread: no model, no network."""
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    called_ae = str(event.assoc.acceptor.ae_title).strip()
    request = cast(C_STORE, event.request)
    sop_class = str(request.AffectedSOPClassUID or "")
    sop_instance = str(request.AffectedSOPInstanceUID or "")

    def refuse(status: int, reason: str, kept: Path | None) -> int:
        return _refuse(
            ctx,
            status=status,
            reason=reason,
            calling_ae=calling_ae,
            request_sop_class=sop_class,
            request_sop_instance=sop_instance,
            received=kept,
        )

    with log_context(calling_ae=calling_ae, sop_instance_uid=sop_instance):
        received: Path | None = None
        try:
            received = event.dataset_path
            incoming = received_file(received)
            if incoming is not None and incoming.error is not None:
                raise incoming.error
            size = received.stat().st_size
            if size > ctx.max_instance_bytes:
                return refuse(
                    STATUS_OUT_OF_RESOURCES_TOO_LARGE,
                    f"instance of {size} bytes exceeds the limit of {ctx.max_instance_bytes}",
                    None,
                )
            # The file is already on the store's disk: what must stay free is checked after it.
            ctx.store.check_room(0, min_free_bytes=ctx.min_free_bytes)
            header = read_header_file(
                received,
                expected_sop_class_uid=sop_class,
                expected_sop_instance_uid=sop_instance,
                transfer_syntax_uid=str(event.context.transfer_syntax),
                max_inflated_bytes=ctx.max_instance_bytes,
            )
            stored = ctx.store.adopt(
                received,
                ctx.store.instance_path(
                    header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
                ),
                sha256=None if incoming is None else incoming.digest.hexdigest(),
            )
            _record(ctx, _received(header, stored, calling_ae, called_ae))
            if ctx.on_recorded is not None:
                ctx.on_recorded()
        except InvalidInstanceError as exc:
            return refuse(_status_for(exc), str(exc), received)
        except StoreFullError as exc:
            return refuse(STATUS_OUT_OF_RESOURCES, str(exc), None)
        except OSError as exc:
            # Out of resources, not a processing failure: senders retry 0xA700 later.
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            logger.error("could not receive the instance to disk: %s", exc.strerror)
            return refuse(
                STATUS_OUT_OF_RESOURCES,
                ("store full while receiving: " if full else "could not receive to disk: ")
                + str(exc.strerror),
                None,
            )
        except (StoreError, SQLAlchemyError) as exc:
            # Out of resources, not a processing failure: senders retry 0xA700 later, and the
            # instance is recorded once the database or the store is back.
            logger.error("could not persist the instance: %s", type(exc).__name__)
            return refuse(
                STATUS_OUT_OF_RESOURCES,
                f"could not persist the instance: {type(exc).__name__}: {exc}",
                None,
            )
        except Exception as exc:
            logger.exception("unexpected error in the C-STORE handler")
            return refuse(
                STATUS_CANNOT_UNDERSTAND if received is None else STATUS_PROCESSING_FAILURE,
                f"unexpected {type(exc).__name__}: {exc}",
                received,
            )
        logger.info("stored instance (%d bytes)", stored.size_bytes)
        return STATUS_SUCCESS


def _received(
    header: InstanceHeader, stored: StoredFile, calling_ae: str, called_ae: str
) -> ReceivedInstance:
    return ReceivedInstance(
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        transfer_syntax_uid=header.transfer_syntax_uid,
        modality=header.modality,
        body_part_examined=header.body_part_examined,
        view_position=header.view_position,
        relative_path=stored.relative_path,
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        calling_ae=calling_ae[:16] or None,
        called_ae=called_ae[:16] or None,
        patient_age_years=header.patient_age_years,
    )


class NodeAE(AE):
    """The node's AE, whose calling-AE allow-list is read live (settings plus database).

    pynetdicom checks ``require_calling_aet`` when it negotiates an association and answers an
    A-ASSOCIATE-RJ (permanent, calling AE title not recognised) to strangers; here that list is
    the live :class:`CallingAEAllowList`, refreshed by :func:`handle_association_request` first.
    """

    def __init__(
        self, ae_title: str, calling_aes: CallingAEAllowList, *, reuse_port: bool = False
    ) -> None:
        super().__init__(ae_title=ae_title)
        self.calling_aes = calling_aes
        self.reuse_port = reuse_port

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        """pynetdicom's threaded server, with :class:`NodeServer`'s socket options and
        :class:`NodeSocket`'s reads."""
        if kwargs.get("server_class") in (None, ThreadedAssociationServer):
            kwargs["server_class"] = NodeServer
        kwargs.setdefault("request_handler", NodeRequestHandler)
        return super().make_server(*args, **kwargs)

    @property
    def require_calling_aet(self) -> list[str]:
        return self.calling_aes.titles()

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        self.calling_aes.configured = ae_titles


def handle_association_request(event: Event, ctx: StoreContext) -> None:
    """Refresh the allow-list before negotiation; refuse (transient) if it was never readable."""
    ae = event.assoc.ae
    if isinstance(ae, NodeAE) and not ae.calling_aes.refresh(ctx.sessions):
        logger.error("calling-AE allow-list unreadable (database down): association refused")
        event.assoc.acse.send_reject(
            ASSOCIATION_REJECTED_TRANSIENT, REJECT_SOURCE_SERVICE_USER, REJECT_NO_REASON_GIVEN
        )
        evt.trigger(event.assoc, evt.EVT_REJECTED, {})
        event.assoc.kill()


def make_ae(settings: Settings) -> NodeAE:
    """The node's AE: every storage SOP class in every transfer syntax, plus Verification."""
    ae = NodeAE(
        settings.ae_title,
        CallingAEAllowList(settings.allowed_calling_aes),
        reuse_port=settings.dicom_listeners > 1,
    )
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.network_timeout_s
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    return ae


def handlers(ctx: StoreContext) -> list[Any]:
    return [
        (evt.EVT_REQUESTED, handle_association_request, [ctx]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ctx]),
    ]
