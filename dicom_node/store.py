"""The instance store: received bytes written durably (temp file, fsync, rename, fsync folder).

Paths are built only from validated UIDs, so a hostile UID cannot escape the store. A file that
the SCP already received to disk (chunked receive, in ``incoming/``) is adopted by fsync and rename
instead of being copied.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from radlight.errors import StoreError, StoreFullError
from radlight.uids import is_valid_uid

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


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing a file's dirty pages (``length`` 0: to the end) to disk
    without waiting, so that a later fsync waits only for what is left. A no-op where the call
    does not exist; a failure is harmless, since the fsync still writes everything."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


@dataclass(frozen=True)
class StoredFile:
    relative_path: str
    size_bytes: int
    sha256: str


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """OS errors as the store's own: a full disk is told apart, it needs a different status."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(f"no space left in the store: {exc.strerror}") from exc
        raise StoreError(f"could not write to the store: {exc.strerror}") from exc


def _file_facts(path: Path, sha256: str | None) -> tuple[int, str]:
    """Size and sha256 (unless known) of a file, made durable on the way (fsync works on a
    read-only handle)."""
    with path.open("rb") as handle:
        digest = sha256 or hashlib.file_digest(handle, "sha256").hexdigest()
        os.fsync(handle.fileno())
        return os.fstat(handle.fileno()).st_size, digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the folders whose entries changed
    (each new folder's parent, deepest first), for the caller to fsync once its file is in
    place: a file's own fsync and its folder's do not make the folder's entry in the study or
    series folder above durable. fsynced after the file's, not after each mkdir: ext4 commits
    every pending change of the file system with the first fsync (the file's), so the folders'
    own cost nothing more, where one fsync after each mkdir is one journal commit each, waited
    for in turn (docs/PERFORMANCE.md)."""
    if folder.is_dir():
        return []
    missing = [folder]
    while not missing[-1].parent.exists():
        missing.append(missing[-1].parent)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            path.mkdir()
    return [path.parent for path in missing]


def _fsync_dirs(folders: Iterable[Path]) -> None:
    for folder in folders:
        _fsync_dir(folder)


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

    @property
    def incoming_dir(self) -> Path:
        """Where the SCP receives files before adopting them: inside the store, so on its disk."""
        return self.root / "incoming"

    def discard_stale_incoming(self, older_than_s: float) -> int:
        """Delete partial receives left in ``incoming/`` by a process that died; returns how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.incoming_dir.glob("*"):
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def write(self, relative_path: str, data: bytes) -> StoredFile:
        """Write ``data`` atomically and durably; an existing file is replaced whole."""
        target = self.absolute(relative_path)
        with _store_errors():
            _replace_durably(target, lambda handle: handle.write(data))
        return StoredFile(
            relative_path=relative_path,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def write_files(self, files: Sequence[tuple[str, Callable[[BinaryIO], object]]]) -> None:
        """Write several files atomically and durably, each by its ``fill`` (e.g. a DICOM
        writer writing straight into the file, with no copy in memory); existing files are
        replaced whole. Every file is filled first, its write-back started as soon as it is
        filled, so the disk writes one while the next is encoded; then each is fsynced and
        renamed into place, and each folder fsynced once after all its renames. Nothing is
        hashed (``write`` hashes; results need no digest).
        On an error, the files already renamed stay (each whole), the rest are not written."""
        staged: list[StagedFile] = []
        try:
            for relative, fill in files:
                staged.append(self.stage(relative, fill))
            for item in staged:
                item.commit()
        except BaseException:
            for item in staged:
                item.discard()  # those committed already are left as they are
            raise
        self.sync_folders(staged)

    def stage(self, relative_path: str, fill: Callable[[BinaryIO], object]) -> "StagedFile":
        """Fill a file beside its place in the store, its write-back started, without waiting
        for the disk: ``StagedFile.commit`` (from any thread) then makes it durable and puts it
        in place, and ``sync_folders`` makes the renames durable. So a worker can go on building
        the next result while the disk takes this one."""
        target = self.absolute(relative_path)
        with _store_errors():
            made = _make_folders(target.parent)
            fd, tmp_name = _filled_temp(target, fill)
        return StagedFile(fd, tmp_name, target, (target.parent, *made))

    def sync_folders(self, staged: Iterable["StagedFile"]) -> None:
        """fsync, once each, the folders of committed staged files (their renames, and the
        folders made for them)."""
        with _store_errors():
            _fsync_dirs(dict.fromkeys(folder for item in staged for folder in item.folders))

    def adopt(self, source: Path, relative_path: str, *, sha256: str | None = None) -> StoredFile:
        """Move a complete received file into place durably (fsync, rename, fsync folder).

        ``sha256``, if the receiver hashed the file as it arrived, saves reading it again. A file
        on another file system (the receiver's temp folder elsewhere) is copied instead.
        """
        target = self.absolute(relative_path)
        with _store_errors():
            made = _make_folders(target.parent)
            size, digest = _file_facts(source, sha256)
            try:
                os.replace(source, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                with source.open("rb") as src:
                    _replace_durably(target, lambda handle: shutil.copyfileobj(src, handle))
                source.unlink(missing_ok=True)
            _fsync_dirs([target.parent, *made])
        return StoredFile(relative_path=relative_path, size_bytes=size, sha256=digest)

    def quarantine(self, data: bytes, *, reason_code: str) -> str | None:
        """Keep refused bytes for inspection; returns None if even that fails (logged by caller)."""
        digest = hashlib.sha256(data).hexdigest()
        relative = str(Path("quarantine", f"{reason_code}-{digest[:32]}.dcm"))
        try:
            self.write(relative, data)
        except StoreError:
            return None
        return relative

    def quarantine_file(self, source: Path, *, reason_code: str) -> str | None:
        """As :meth:`quarantine`, for a refused file received to disk (moved, not copied)."""
        try:
            with source.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            relative = str(Path("quarantine", f"{reason_code}-{digest[:32]}.dcm"))
            self.adopt(source, relative)
        except (OSError, StoreError):
            return None
        return relative

    def drop_cached(self, paths: Iterable[Path]) -> None:
        """Let the kernel drop these files' pages from the page cache (``POSIX_FADV_DONTNEED``).

        For files written once and read once, like a job's results once they are sent: kept
        cached they push out pages that are read again, and the next job's writes need pages of
        their own. On a VM whose guest has not touched its memory yet, each such page costs the
        host a fault (4 MB into fresh pages: 9.5 ms of CPU; into pages just dropped: 0.7 ms).
        Their contents stay on disk: a later read (a retry, the API) reads them from there. Best
        effort: a file that is gone, or a system without the call, is skipped."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is None:
            return
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def read(self, relative_path: str) -> bytes:
        try:
            return self.absolute(relative_path).read_bytes()
        except OSError as exc:
            raise StoreError(f"could not read {relative_path!r}: {exc.strerror}") from exc


class StagedFile:
    """A filled temp file beside ``target``, not yet in its place (see ``InstanceStore.stage``).

    ``commit`` fsyncs it and renames it over ``target``; ``discard`` removes it unless it was
    committed. Each runs once; both close the descriptor."""

    def __init__(self, fd: int, tmp_name: str, target: Path, folders: tuple[Path, ...]) -> None:
        self.target = target
        self.folders = folders  # to fsync once it is in place: its own, and those made for it
        self._fd: int | None = fd
        self._tmp_name = tmp_name
        self.committed = False

    def commit(self) -> None:
        if self._fd is None:
            raise StoreError(f"{self.target.name} was already committed or discarded")
        try:
            with _store_errors():
                os.fsync(self._fd)
                os.replace(self._tmp_name, self.target)
            self.committed = True
        finally:
            os.close(self._fd)
            self._fd = None
            if not self.committed:
                Path(self._tmp_name).unlink(missing_ok=True)

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self.committed:
            Path(self._tmp_name).unlink(missing_ok=True)


def _filled_temp(target: Path, fill: Callable[[BinaryIO], object]) -> tuple[int, str]:
    """A temp file beside ``target`` filled by ``fill``, its write-back started: its open
    descriptor and name. On an error it is removed."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb", closefd=False) as handle:
            fill(handle)
        start_writeback(fd)
    except BaseException:
        os.close(fd)
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return fd, tmp_name


def _replace_durably(target: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Fill a temp file beside ``target``, fsync it, rename it over ``target``, fsync the folder
    and the folders made for it."""
    made = _make_folders(target.parent)
    fd, tmp_name = _filled_temp(target, fill)
    try:
        os.fsync(fd)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    _fsync_dirs([target.parent, *made])
