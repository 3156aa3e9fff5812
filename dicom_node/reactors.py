"""An association's two reactor threads, woken by their work instead of polling every millisecond.

pynetdicom runs two threads per association and each wakes every millisecond for as long as it is
open: its upper layer (reading the socket, running the state machine) and the association (looking
for requests, releases and aborts). That costs CPU on every open association (~45 ms a second on a
worker's kept association to the PACS) and time on every hand-off between them: a C-STORE the node
receives waits up to a millisecond for each of the three hops (the last PDU read, the request
served, the response written). Here both loops are pynetdicom 3's, step for step, except how they
wait:

- the upper layer waits on its socket and on a wake-up socket pair for up to ``IDLE_WAIT_S``: data
  from the peer, or a primitive the local user queues (``send_pdu``), wakes it at once;
- the association waits on an event for up to ``IDLE_WAIT_S``, set when a DIMSE message is
  complete, when the upper layer hands it a primitive (a release, an abort) and when the upper
  layer ends; it counts as paused while it waits, so a sender taking the association never waits
  out a sleep (pynetdicom's makes it wait up to 1 ms per message).

Timers (ARTIM, the network idle timeout) are checked at least every ``IDLE_WAIT_S``.
tests/dicom_node/test_reactors.py covers idle cost, release, abort and sending, on both sides.
"""

import contextlib
import logging
import queue
import select
import socket
import threading
import time
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket
from pynetdicom.utils import make_target

IDLE_WAIT_S = 0.02  # the longest wait: how late a timer may be noticed

# pynetdicom's loggers, so the messages read as they would without these classes
_DUL_LOGGER = logging.getLogger("pynetdicom.dul")
_ASSOC_LOGGER = logging.getLogger("pynetdicom.association")


class _SignallingQueue(queue.Queue[Any]):
    """A queue that sets ``work`` whenever something is put on it."""

    def __init__(self, work: threading.Event) -> None:
        super().__init__()
        self.work = work

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.work.set()


class WakingDUL(DULServiceProvider):
    """pynetdicom's upper layer, waiting on its socket and on ``send_pdu`` instead of polling."""

    _wake_read: socket.socket
    _wake_write: socket.socket
    _assoc_work: threading.Event

    def _arm(self, assoc_work: threading.Event) -> None:
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._assoc_work = assoc_work
        self.to_user_queue = _SignallingQueue(assoc_work)

    def _wake(self) -> None:
        # An OSError: already woken (the buffer is full), or the reactor has ended.
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _wait_for_work(self) -> None:
        raw = getattr(self.socket, "socket", None)
        if raw is None:
            time.sleep(IDLE_WAIT_S)
            return
        pending = getattr(raw, "pending", None)  # TLS: decrypted bytes select cannot see
        if pending is not None and pending():
            return
        try:
            select.select([raw, self._wake_read], [], [], IDLE_WAIT_S)
        except (ValueError, OSError):  # closed meanwhile
            time.sleep(IDLE_WAIT_S)
        with contextlib.suppress(OSError):  # nothing (more) to read
            while self._wake_read.recv(4096):
                pass

    def run_reactor(self) -> None:
        """pynetdicom 3's ``DULServiceProvider.run_reactor`` with :meth:`_wait_for_work`."""
        try:
            self._run_reactor()
        finally:
            self._assoc_work.set()  # the association notices the end at once
            self._wake_read.close()
            self._wake_write.close()

    def _run_reactor(self) -> None:
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._wait_for_work()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:  # as pynetdicom: abort on anything
                _DUL_LOGGER.error("Exception in DUL.run(), aborting association")
                _DUL_LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False


class WakingAssociation(Association):
    """pynetdicom's association, its reactor waiting for work instead of polling."""

    _work: threading.Event

    def kill(self) -> None:
        self._work.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom 3's ``Association._run_reactor`` with a signalled, paused wait."""
        self._is_paused = False
        while not self._kill:
            self._is_paused = True  # nothing here touches the DIMSE queue while waiting
            self._work.wait(IDLE_WAIT_S)
            self._work.clear()  # before the checks: work arriving after them sets it again
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                # A send_*() paused us after the wait returned, having read _is_paused while it
                # was still True: its response is not ours to take off the queue. pynetdicom's
                # own loop has this window; the CI once saw it steal a C-ECHO-RSP ("Received
                # unexpected C-ECHO service message") and the request time out.
                self._work.set()  # look again as soon as the send lets us go
                continue
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._work.set()  # another message may be queued behind it
                self._serve_request(msg, cast(int, context_id))
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                _ASSOC_LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                _ASSOC_LOGGER.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                _ASSOC_LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


def waking_reactors(assoc: Any, dul_class: type[WakingDUL] = WakingDUL) -> None:
    """Give an association (before its threads start) the waking reactors; ``dul_class`` may be
    a subclass of :class:`WakingDUL` that also changes how PDUs are read."""
    work = threading.Event()
    assoc.__class__ = WakingAssociation
    assoc._work = work
    assoc.dimse.msg_queue = _SignallingQueue(work)
    assoc.dul.__class__ = dul_class
    assoc.dul._arm(work)
    # The upper layer is a Thread made with its bound ``run_reactor`` as target: point it at ours.
    assoc.dul._target = make_target(assoc.dul.run_reactor)
