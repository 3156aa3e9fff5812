"""How much of a file the kernel holds in its page cache, read with util-linux's ``fincore``."""

import shutil
import subprocess
from pathlib import Path

import pytest


def cached_pages(path: Path) -> int:
    """The number of ``path``'s pages in the page cache; skips the test where that cannot be
    told (no ``fincore``) or means nothing (tmpfs, whose files live in the page cache)."""
    fincore = shutil.which("fincore")
    if fincore is None:
        pytest.skip("util-linux's fincore is not installed")
    fs_type = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    if fs_type in ("tmpfs", "ramfs"):
        pytest.skip(f"{path} is on {fs_type}: its pages cannot leave the page cache")
    out = subprocess.run(
        [fincore, "--raw", "--noheadings", "--output", "PAGES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip())
