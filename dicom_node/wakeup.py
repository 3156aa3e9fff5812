"""Waking the node's assembler when an instance is recorded, so that it need not poll the database.

After each recorded instance the C-STORE handler (in the node process or in one of its extra
listener processes) sends one datagram to an abstract Unix socket named after the node's DICOM
port and process id; the assembler thread waits on that socket. The database stays the source of
truth: a datagram that is lost (a full socket buffer, an assembler not yet started) only delays the
study to the assembler's next check or tick. Abstract sockets are Linux's; where one cannot be made
the node falls back to polling (``RADLIGHT_ASSEMBLER_POLL_S``).

An abstract socket has no file permissions: any local process can send to it. The receiver asks
the kernel for each datagram's sender credentials (``SO_PASSCRED``) and counts only those sent by
its own user, so another user's flood of datagrams costs the assembler no database check.
"""

import errno
import logging
import os
import select
import socket
import struct

logger = logging.getLogger(__name__)

_DATAGRAM = b"r"
_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid
_ANCILLARY_BYTES = socket.CMSG_SPACE(_CREDENTIALS.size)


def wakeup_address(dicom_port: int, node_pid: int) -> bytes:
    """The abstract socket address of the assembler of the node ``node_pid`` serving ``dicom_port``
    (the port keeps two nodes apart that share a network namespace and a pid, e.g. containers
    with host networking)."""
    return b"\0radlight-assembler-%d-%d" % (dicom_port, node_pid)


class WakeupReceiver:
    """The assembler's end: a datagram socket it waits on."""

    def __init__(self, address: bytes) -> None:
        self.address = address
        self.ignored = 0  # datagrams from another user, not counted
        self._uid = os.getuid()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._socket.bind(address)
        except OSError:
            self._socket.close()
            raise
        self._socket.setblocking(False)

    @classmethod
    def open(cls, address: bytes) -> "WakeupReceiver | None":
        """The receiver, or None (logged) where the socket cannot be made."""
        try:
            return cls(address)
        except OSError as exc:
            logger.warning("assembler wake-ups unavailable (%s); polling the database instead", exc)
            return None

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for wake-ups; how many of this user's arrived (all
        datagrams are consumed)."""
        readable, _, _ = select.select([self._socket], [], [], max(0.0, timeout))
        count = 0
        while readable:
            try:
                _, ancillary, _, _ = self._socket.recvmsg(16, _ANCILLARY_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # closed by close() while waiting
                break
            if self._from_this_user(ancillary):
                count += 1
            else:
                self.ignored += 1
        return count

    def _from_this_user(self, ancillary: list[tuple[int, int, bytes]]) -> bool:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                _pid, uid, _gid = _CREDENTIALS.unpack(data[: _CREDENTIALS.size])
                return bool(uid == self._uid)
        return False

    def close(self) -> None:
        self._socket.close()


class WakeupSender:
    """The C-STORE handler's end: one datagram per recorded instance, never raising, never
    blocking (a full receive buffer means the assembler has wake-ups pending already)."""

    def __init__(self, address: bytes) -> None:
        self._address = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def __call__(self) -> None:
        try:
            self._socket.sendto(_DATAGRAM, self._address)
        except OSError as exc:
            # No assembler on this node (ECONNREFUSED/ENOENT) or wake-ups pending (EAGAIN): the
            # database has the instance, the next check or tick finds it.
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN):
                logger.debug("could not wake the assembler: %s", exc)

    def close(self) -> None:
        self._socket.close()
