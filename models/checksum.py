"""sha256 of model files, cached per file identity so a worker does not re-hash per image.

The cache key is (path, device, inode, size, mtime_ns): replacing or rewriting the file changes
at least one of them, so the next check hashes it again.
"""

import hashlib
import os
import threading
from pathlib import Path

_CHUNK = 1 << 20
_MAX_ENTRIES = 256
_cache: dict[tuple[str, int, int, int, int], str] = {}
_lock = threading.Lock()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_identity(path: Path) -> tuple[str, int, int, int, int]:
    """(path, device, inode, size, mtime_ns): changes whenever the file is replaced or rewritten."""
    stat = os.stat(path)
    return (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def cached_sha256_file(path: Path) -> str:
    """:func:`sha256_file`, remembered while the file's identity (inode, size, mtime) holds."""
    key = file_identity(path)
    with _lock:
        known = _cache.get(key)
    if known is not None:
        return known
    digest = sha256_file(path)
    if file_identity(path) != key:  # changed while we read it: do not remember a torn hash
        return digest
    with _lock:
        if len(_cache) >= _MAX_ENTRIES:
            _cache.clear()
        _cache[key] = digest
    return digest


def clear_checksum_cache() -> None:
    with _lock:
        _cache.clear()
