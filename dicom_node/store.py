"""The instance store: received bytes written durably (temp file, fsync, rename, fsync folder).

Paths are built only from validated UIDs, so a hostile UID cannot escape the store.
"""

import errno
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from radlight.errors import StoreError, StoreFullError
from radlight.uids import is_valid_uid


@dataclass(frozen=True)
class StoredFile:
    relative_path: str
    size_bytes: int
    sha256: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InstanceStore:
    """Files under ``root``: ``instances/``, ``results/`` and ``quarantine/`` for refused input."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        return self._uid_path("instances", study_uid, series_uid, sop_uid)

    def result_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        return self._uid_path("results", study_uid, series_uid, sop_uid)

    def _uid_path(self, area: str, *uids: str) -> str:
        for uid in uids:
            if not is_valid_uid(uid):
                raise StoreError(f"refusing to build a path from an invalid UID {uid[:70]!r}")
        *folders, name = uids
        return str(Path(area, *folders, f"{name}.dcm"))

    def absolute(self, relative_path: str) -> Path:
        path = (self.root / relative_path).resolve()
        if not path.is_relative_to(self.root):
            raise StoreError(f"path {relative_path!r} is outside the store")
        return path

    def free_bytes(self) -> int:
        """Free space on the store's file system, as an unprivileged writer sees it."""
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free

    def check_room(self, size_bytes: int, *, min_free_bytes: int) -> None:
        """Raise StoreFullError unless ``size_bytes`` fit and leave ``min_free_bytes`` free.

        Checked before accepting an instance, so the node refuses (0xA700, which senders retry)
        while there is still room for the database, the logs and the results of work in flight,
        instead of failing half-way through a write on a full disk.
        """
        try:
            free = self.free_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read the store's free space: {exc.strerror}") from exc
        if free - size_bytes < min_free_bytes:
            raise StoreFullError(
                f"store below its free-space watermark: {free} bytes free, {size_bytes} to "
                f"write, {min_free_bytes} to keep free"
            )

    def write(self, relative_path: str, data: bytes) -> StoredFile:
        """Write ``data`` atomically and durably; an existing file is replaced whole."""
        target = self.absolute(relative_path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp_name, target)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
            _fsync_dir(target.parent)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFullError(f"no space left in the store: {exc.strerror}") from exc
            raise StoreError(f"could not write to the store: {exc.strerror}") from exc
        return StoredFile(
            relative_path=relative_path,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def quarantine(self, data: bytes, *, reason_code: str) -> str | None:
        """Keep refused bytes for inspection; returns None if even that fails (logged by caller)."""
        digest = hashlib.sha256(data).hexdigest()
        relative = str(Path("quarantine", f"{reason_code}-{digest[:32]}.dcm"))
        try:
            self.write(relative, data)
        except StoreError:
            return None
        return relative

    def read(self, relative_path: str) -> bytes:
        try:
            return self.absolute(relative_path).read_bytes()
        except OSError as exc:
            raise StoreError(f"could not read {relative_path!r}: {exc.strerror}") from exc
