"""The file a C-STORE data set is received into, and what is learnt while it is written.

pynetdicom's chunked receive (``STORE_RECV_CHUNKED_DATASET``) writes every fragment of a data set
to a ``NamedTemporaryFile`` in the system temp folder. Here that file is made in the store's
``incoming/`` folder instead (the finished file is renamed into place, not copied), it is hashed
as it is written (no second read of the pixel data), and its write-back to disk is started every
few MiB while the rest is still arriving, so the fsync before the answer waits only for the tail.
"""

import ctypes
import ctypes.util
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from pynetdicom import dimse_messages

WRITEBACK_BYTES = 2 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2  # start write-back of dirty pages in the range; do not wait


def _sync_file_range() -> Any:
    """libc's sync_file_range (Linux), which Python's os module lacks; None elsewhere."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_START_WRITEBACK = _sync_file_range()


class _Registry:
    """The store folder to receive into, and the files being received, by name."""

    folder: Path | None = None
    files: dict[str, "IncomingFile"] = {}  # noqa: RUF012 - one registry per process
    lock = threading.Lock()


class IncomingFile:
    """What pynetdicom writes a received data set to: ``write``, ``file.flush``, ``close``,
    ``name`` are all it uses of a NamedTemporaryFile."""

    def __init__(self, folder: Path | None, suffix: str = ".dcm") -> None:
        fd, self.name = tempfile.mkstemp(dir=folder, prefix=".receiving-", suffix=suffix)
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
        if _START_WRITEBACK is not None and pending >= WRITEBACK_BYTES:
            _START_WRITEBACK(
                self.file.fileno(), self._written_back, pending, _SYNC_FILE_RANGE_WRITE
            )
            self._written_back = self.size
        return total

    def close(self) -> None:
        with _Registry.lock:
            _Registry.files.pop(self.name, None)
        self.file.close()


def _incoming_file(*args: Any, **kwargs: Any) -> IncomingFile:
    """Stands in for ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``."""
    folder = _Registry.folder
    return IncomingFile(folder if folder is not None and folder.is_dir() else None)


dimse_messages.NamedTemporaryFile = _incoming_file  # type: ignore[attr-defined,assignment]


def receive_into(folder: Path) -> None:
    """Receive into ``folder`` (it must exist); process-wide, as pynetdicom's configuration is.
    A node whose store is elsewhere still works: its files are copied instead of renamed."""
    _Registry.folder = folder


def received_file(path: Path) -> IncomingFile | None:
    """The :class:`IncomingFile` that received ``path`` (until pynetdicom closes it), if any."""
    with _Registry.lock:
        return _Registry.files.get(str(path))
