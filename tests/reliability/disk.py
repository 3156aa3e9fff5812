"""A small disk for the store, so a test can fill it for real without touching anyone else's.

Where the test may mount (root with CAP_SYS_ADMIN, as on this machine and in CI) the store gets
its own 64 MiB tmpfs: filling it is exact and nothing else on the machine can change its free
space. Elsewhere the store stays on the shared file system and the watermark is set 1 GiB below
the free space measured at the start; a 2 GiB file then takes it past the watermark. That is just
as real, but another process writing or freeing a gigabyte during the test would upset it.
"""

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TMPFS_BYTES = 64 * 1024**2
TMPFS_WATERMARK = 16 * 1024**2
SHARED_MARGIN = 1024**3


@dataclass
class SmallDisk:
    path: Path
    watermark: int  # RADLIGHT_STORE_MIN_FREE_BYTES for the node
    fill_bytes: int  # what takes the free space below the watermark

    @contextlib.contextmanager
    def filled(self) -> Iterator[None]:
        """A real file that leaves less than the watermark free, removed afterwards."""
        ballast = self.path / "ballast"
        try:
            with ballast.open("wb") as handle:
                os.posix_fallocate(handle.fileno(), 0, self.fill_bytes)
            assert shutil.disk_usage(self.path).free < self.watermark
            yield
        finally:
            ballast.unlink(missing_ok=True)


def _mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    completed = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return completed.returncode == 0


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[SmallDisk]:
    """``path`` (created) on its own tmpfs where possible, else on the shared file system."""
    path.mkdir(parents=True, exist_ok=True)
    if _mount_tmpfs(path):
        try:
            free = shutil.disk_usage(path).free
            yield SmallDisk(path, TMPFS_WATERMARK, free - TMPFS_WATERMARK // 2)
        finally:
            subprocess.run(
                ["umount", "-l", str(path)], capture_output=True, timeout=30, check=False
            )
        return
    free = shutil.disk_usage(path).free
    yield SmallDisk(path, free - SHARED_MARGIN, 2 * SHARED_MARGIN)
