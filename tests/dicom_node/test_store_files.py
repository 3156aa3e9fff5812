"""Writing several files at once into the store: each whole and in place, or not there at all."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

import dicom_node.store as store_module
from dicom_node.store import InstanceStore
from radlight.errors import StoreError
from tests.page_cache import cached_pages


def _bytes(data: bytes) -> Callable[[BinaryIO], None]:
    def fill(handle: BinaryIO) -> None:
        handle.write(data)

    return fill


def test_files_land_whole_in_new_folders_and_replace_older_ones(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    sc = store.result_path("2.25.1", "2.25.2", "2.25.3")
    sr = store.result_path("2.25.1", "2.25.4", "2.25.5")
    store.write_files([(sc, _bytes(b"old")), (sr, _bytes(b"report"))])
    store.write_files([(sc, _bytes(b"new image"))])
    assert store.read(sc) == b"new image"
    assert store.read(sr) == b"report"
    leftovers = [p for p in (tmp_path / "store").rglob("*") if p.name.startswith(".incoming-")]
    assert leftovers == []


def test_a_failing_writer_leaves_no_partial_file(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    first = store.result_path("2.25.1", "2.25.2", "2.25.3")
    second = store.result_path("2.25.1", "2.25.2", "2.25.6")

    def broken(handle: BinaryIO) -> None:
        handle.write(b"half")
        raise OSError(5, "Input/output error")

    with pytest.raises(StoreError, match="could not write to the store"):
        store.write_files([(first, _bytes(b"whole")), (second, broken)])
    assert store.read(first) == b"whole"
    assert not store.absolute(second).exists()
    assert [p.name for p in store.absolute(second).parent.iterdir()] == ["2.25.3.dcm"]


def test_dropped_files_leave_the_page_cache_and_stay_on_disk(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    relative = store.result_path("2.25.1", "2.25.2", "2.25.3")
    data = bytes(range(256)) * 4096  # 1 MiB
    store.write_files([(relative, _bytes(data))])
    path = store.absolute(relative)
    assert cached_pages(path) > 0  # just written: still cached

    store.drop_cached([path, tmp_path / "gone.dcm"])  # a missing file is skipped

    assert cached_pages(path) == 0
    assert store.read(relative) == data


def test_adopting_into_a_new_study_makes_every_new_folder_entry_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each folder whose entries changed (the root, the new area, study and series) is
    fsynced, and only after the file's own fsync, which on ext4 commits the new folders too."""
    synced: list[str] = []
    fsync = os.fsync
    fsync_dir = store_module._fsync_dir

    def record_file(fd: int) -> None:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):  # folders are recorded by record_dir
            synced.append("file")
        fsync(fd)

    def record_dir(path: Path) -> None:
        synced.append(str(path))
        fsync_dir(path)

    monkeypatch.setattr(os, "fsync", record_file)
    monkeypatch.setattr(store_module, "_fsync_dir", record_dir)
    store = InstanceStore(tmp_path / "store")
    store.incoming_dir.mkdir(parents=True)
    received = store.incoming_dir / "received.dcm"
    received.write_bytes(b"instance")

    relative = store.instance_path("2.25.1", "2.25.2", "2.25.3")
    store.adopt(received, relative, sha256="0" * 64)

    area = store.root / "instances"  # new too: its entry in the store's root changed
    study = area / "2.25.1"
    assert synced[0] == "file"
    assert sorted(synced[1:]) == sorted(map(str, [study / "2.25.2", study, area, store.root]))
    assert store.read(relative) == b"instance"
