"""The store's free-space watermark, on the real file system of the test's folder."""

from pathlib import Path

import pytest

from dicom_node.store import InstanceStore
from radlight.errors import StoreFullError


def test_check_room_refuses_what_would_leave_less_than_the_watermark(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    free = store.free_bytes()
    assert free > 0
    store.check_room(1024, min_free_bytes=0)
    with pytest.raises(StoreFullError, match="free-space watermark"):
        store.check_room(1024, min_free_bytes=free)  # fits on disk, but not above the watermark
    with pytest.raises(StoreFullError, match="free-space watermark"):
        store.check_room(free + 1, min_free_bytes=0)  # does not fit at all
