"""The SCU association's two reactor threads, waiting instead of polling while there is nothing to do.

pynetdicom runs two threads per association that each wake every millisecond for as long as it is
open: its upper layer (reading the socket, running the state machine) and the association (looking
for requests, releases and aborts). A worker keeps its association to the PACS open between jobs,
so that costs ~45 ms of CPU every second per worker process, idle or not (docs/DECISIONS.md).

Here both loops are pynetdicom 3's, step for step, except how they wait when idle:

- the upper layer, after a few idle turns, waits on the socket for up to ``IDLE_WAIT_S``: data from
  the peer wakes it at once; what the local user queues (a release, or a P-DATA of pynetdicom's own
  sending path) is picked up within ``IDLE_WAIT_S``;
- the association doubles its wait while nothing happens, up to ``IDLE_WAIT_S``, back to 1 ms once
  something did, and counts as paused while it waits, so a sender taking the association never
  waits out its sleep (pynetdicom's makes it wait up to 1 ms per message).

tests/dicom_node/test_scu_reactors.py covers idle cost, peer release and abort, and sending.
"""

import logging
import queue
import select
import time
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket
from pynetdicom.utils import make_target

BUSY_DELAY_S = 0.001  # pynetdicom's wait between turns
IDLE_WAIT_S = 0.02  # the longest wait once idle
_BUSY_TURNS = 10  # idle turns at pynetdicom's pace before waiting longer

# pynetdicom's loggers, so the messages read as they would without these classes
_DUL_LOGGER = logging.getLogger("pynetdicom.dul")
_ASSOC_LOGGER = logging.getLogger("pynetdicom.association")


class QuietDUL(DULServiceProvider):
    """pynetdicom's upper layer, waiting on its socket when idle instead of every millisecond."""

    def _wait_for_work(self, idle_turns: int) -> None:
        if idle_turns <= _BUSY_TURNS:
            time.sleep(self._run_loop_delay)
            return
        raw = getattr(self.socket, "socket", None)
        if raw is None:
            time.sleep(self._run_loop_delay)
            return
        try:
            select.select([raw], [], [], IDLE_WAIT_S)
        except (ValueError, OSError):  # closed meanwhile
            time.sleep(self._run_loop_delay)

    def run_reactor(self) -> None:
        """pynetdicom 3's ``DULServiceProvider.run_reactor`` with :meth:`_wait_for_work`."""
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        idle_turns = 0
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle_turns = max(idle_turns, 1)
            if idle_turns:
                self._wait_for_work(idle_turns)
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
                idle_turns += 1
                continue
            self.state_machine.do_action(event)
            idle_turns = 0


class QuietAssociation(Association):
    """pynetdicom's association, its reactor waiting longer while nothing happens."""

    def _run_reactor(self) -> None:
        """pynetdicom 3's ``Association._run_reactor`` with a growing, paused wait."""
        self._is_paused = False
        delay = BUSY_DELAY_S
        while not self._kill:
            self._is_paused = True  # nothing here touches the DIMSE queue while waiting
            time.sleep(delay)
            self._reactor_checkpoint.wait()
            self._is_paused = False
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
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
            delay = BUSY_DELAY_S if msg else min(delay * 2, IDLE_WAIT_S)


def quiet_reactors(assoc: Any) -> None:
    """Give a requestor's association (before it starts) the quiet reactors."""
    assoc.__class__ = QuietAssociation
    assoc.dul.__class__ = QuietDUL
    # The upper layer is a Thread made with its bound ``run_reactor`` as target: point it at ours.
    assoc.dul._target = make_target(assoc.dul.run_reactor)
