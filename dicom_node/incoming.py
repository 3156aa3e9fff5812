"""The file a C-STORE data set is received into, and what is learnt while it is written.

pynetdicom's chunked receive (``STORE_RECV_CHUNKED_DATASET``) writes every fragment of a data set
to a ``NamedTemporaryFile`` in the system temp folder. Here that file is made in the store's
``incoming/`` folder instead (the finished file is renamed into place, not copied), it is hashed
as it is written (no second read of the pixel data), and its write-back to disk is started every
few MiB while the rest is still arriving, so the fsync before the answer waits only for the tail.
The files are made ahead, empty, by a thread of their own (:class:`SpareFiles`).
"""

import collections
import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from pynetdicom import dimse_messages

from dicom_node.store import start_writeback

logger = logging.getLogger(__name__)

WRITEBACK_BYTES = 2 * 1024 * 1024
SPARE_FILES = 4  # per process: one per association receiving at once, for the usual few
SPARE_RETRY_S = 1.0  # after a failed attempt (disk full, folder gone) to make one
PREFIX, SUFFIX = ".receiving-", ".dcm"


class SpareFiles:
    """Empty files made ahead in the receiving folder, so that a C-STORE does not wait while one
    is made. Making a file costs ext4 a search of its inode bitmap that skips every recently
    deleted inode (``recently_deleted`` in ``perf``): 0.5-1.2 ms of CPU per file on a store
    that deletes files (retention, or a benchmark's clean-ups), paid here by a thread of its own
    while the association waits for the next PDU (docs/PERFORMANCE.md).

    A spare that was removed meanwhile (another process's start-up sweep of stale files) is
    skipped, and when none is ready the receiver makes its own: spares only ever save time."""

    def __init__(self, folder: Path, count: int = SPARE_FILES) -> None:
        self.folder = folder
        self._count = count
        self._ready: collections.deque[tuple[int, str]] = collections.deque()
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._make, name="spare-files", daemon=True)
        self._thread.start()

    def take(self) -> tuple[int, str] | None:
        """A spare's open descriptor and name, or None when none is ready."""
        with self._changed:
            while self._ready:
                fd, name = self._ready.popleft()
                self._changed.notify()
                if os.fstat(fd).st_nlink:  # still in the folder
                    return fd, name
                os.close(fd)
        return None

    def ready(self) -> int:
        with self._changed:
            return len(self._ready)

    def _make(self) -> None:
        failing = False
        while True:
            with self._changed:
                while not self._stopped and len(self._ready) >= self._count:
                    self._changed.wait()
                if self._stopped:
                    return
            try:
                made = tempfile.mkstemp(dir=self.folder, prefix=PREFIX, suffix=SUFFIX)
            except OSError as exc:
                if not failing:  # once per spell of failures: receivers report their own
                    logger.warning("cannot make spare files to receive into: %s", exc.strerror)
                failing = True
                with self._changed:
                    self._changed.wait_for(lambda: self._stopped, timeout=SPARE_RETRY_S)
                continue
            failing = False
            with self._changed:
                if not self._stopped:
                    self._ready.append(made)
                    continue
            _discard(*made)
            return

    def close(self) -> None:
        """Stop making spares and remove the ones not taken."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
            left = list(self._ready)
            self._ready.clear()
        self._thread.join(timeout=5)
        for fd, name in left:
            _discard(fd, name)


def _discard(fd: int, name: str) -> None:
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


class _Registry:
    """The store folder to receive into, its spare files, and the files being received."""

    folder: Path | None = None
    spares: SpareFiles | None = None
    files: dict[str, "IncomingFile"] = {}  # noqa: RUF012 - one registry per process
    lock = threading.Lock()


class IncomingFile:
    """What pynetdicom writes a received data set to: ``write``, ``file.flush``, ``close``,
    ``name`` are all it uses of a NamedTemporaryFile."""

    def __init__(self, folder: Path | None, spares: SpareFiles | None = None) -> None:
        spare = spares.take() if spares is not None else None
        if spare is None:
            spare = tempfile.mkstemp(dir=folder, prefix=PREFIX, suffix=SUFFIX)
        fd, self.name = spare
        self.file = os.fdopen(fd, "wb", buffering=0)  # every write reaches the kernel at once
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None  # a failed write (disk full): the rest is not written
        self._written_back = 0
        with _Registry.lock:
            _Registry.files[self.name] = self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append a fragment; an OSError is kept for the C-STORE handler to answer (0xA700 for a
        full disk) instead of raised into pynetdicom, which would abort the association."""
        view = memoryview(data)
        total = len(view)
        if self.error is not None:
            return total
        try:
            while view:
                view = view[self.file.write(view) or 0 :]
        except OSError as exc:
            self.error = exc
            return total
        self.digest.update(data)
        self.size += total
        pending = self.size - self._written_back
        if pending >= WRITEBACK_BYTES:
            start_writeback(self.file.fileno(), self._written_back, pending)
            self._written_back = self.size
        return total

    def close(self) -> None:
        with _Registry.lock:
            _Registry.files.pop(self.name, None)
        self.file.close()


def _incoming_file(*args: Any, **kwargs: Any) -> IncomingFile:
    """Stands in for ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``."""
    folder = _Registry.folder
    if folder is None or not folder.is_dir():
        return IncomingFile(None)
    return IncomingFile(folder, _Registry.spares)


dimse_messages.NamedTemporaryFile = _incoming_file  # type: ignore[attr-defined,assignment]


def receive_into(folder: Path) -> None:
    """Receive into ``folder`` (it must exist), its files made ahead; process-wide, as
    pynetdicom's configuration is. A node whose store is elsewhere still works: its files are
    copied instead of renamed."""
    stop_receiving()
    _Registry.folder = folder
    _Registry.spares = SpareFiles(folder)


def stop_receiving() -> None:
    """Stop making spare files, and remove the ones left (the node is stopping)."""
    spares, _Registry.spares = _Registry.spares, None
    if spares is not None:
        spares.close()


def received_file(path: Path) -> IncomingFile | None:
    """The :class:`IncomingFile` that received ``path`` (until pynetdicom closes it), if any."""
    with _Registry.lock:
        return _Registry.files.get(str(path))
