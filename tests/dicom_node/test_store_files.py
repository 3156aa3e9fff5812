"""Writing several files at once into the store: each whole and in place, or not there at all."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

import dicom_node.store as store_module
from dicom_node.store import InstanceStore
from radlight.errors import StoreError, StoreFullError
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


def test_a_failing_writer_leaves_no_file_of_the_set(tmp_path: Path) -> None:
    """Every file is filled before any is renamed: a writer that fails leaves none in place,
    an older copy untouched, and no temp file behind."""
    store = InstanceStore(tmp_path / "store")
    first = store.result_path("2.25.1", "2.25.2", "2.25.3")
    second = store.result_path("2.25.1", "2.25.2", "2.25.6")
    store.write_files([(first, _bytes(b"older"))])

    def broken(handle: BinaryIO) -> None:
        handle.write(b"half")
        raise OSError(5, "Input/output error")

    with pytest.raises(StoreError, match="could not write to the store"):
        store.write_files([(first, _bytes(b"whole")), (second, broken)])
    assert store.read(first) == b"older"
    assert not store.absolute(second).exists()
    assert [p.name for p in store.absolute(second).parent.iterdir()] == ["2.25.3.dcm"]


def test_a_failing_rename_keeps_the_files_already_in_place_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InstanceStore(tmp_path / "store")
    first = store.result_path("2.25.1", "2.25.2", "2.25.3")
    second = store.result_path("2.25.1", "2.25.2", "2.25.6")
    replace = os.replace

    def failing_second(source: str, target: Path) -> None:
        if Path(target).name == "2.25.6.dcm":
            raise OSError(28, "No space left on device")
        replace(source, target)

    monkeypatch.setattr(os, "replace", failing_second)
    with pytest.raises(StoreFullError):
        store.write_files([(first, _bytes(b"whole")), (second, _bytes(b"second"))])
    assert store.read(first) == b"whole"
    assert [p.name for p in store.absolute(second).parent.iterdir()] == ["2.25.3.dcm"]


def test_every_file_is_filled_and_started_to_disk_before_the_first_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk writes one file while the next is filled; each file is fsynced before its
    rename, and the folders once, after every rename (what makes the set durable)."""
    events: list[str] = []
    fsync, replace, start = os.fsync, os.replace, store_module.start_writeback
    fsync_dir = store_module._fsync_dir

    def fill(name: str) -> Callable[[BinaryIO], None]:
        def write(handle: BinaryIO) -> None:
            events.append(f"fill {name}")
            handle.write(name.encode())

        return write

    def record_start(fd: int, offset: int = 0, length: int = 0) -> None:
        events.append("start")
        start(fd, offset, length)

    def record_fsync(fd: int) -> None:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):  # folders are recorded by record_dir
            events.append("fsync")
        fsync(fd)

    def record_replace(source: str, target: Path) -> None:
        events.append(f"rename {Path(target).stem}")
        replace(source, target)

    def record_dir(path: Path) -> None:
        events.append(f"folder {path.relative_to(tmp_path)}")
        fsync_dir(path)

    monkeypatch.setattr(store_module, "start_writeback", record_start)
    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    monkeypatch.setattr(store_module, "_fsync_dir", record_dir)
    store = InstanceStore(tmp_path / "store")
    store.root.mkdir()
    a = store.result_path("2.25.1", "2.25.2", "2.25.3")
    b = store.result_path("2.25.1", "2.25.4", "2.25.5")
    store.write_files([(a, fill("a")), (b, fill("b"))])

    first_folder = next(i for i, event in enumerate(events) if event.startswith("folder"))
    assert events[:first_folder] == [
        "fill a",
        "start",
        "fill b",
        "start",
        "fsync",
        "rename 2.25.3",
        "fsync",
        "rename 2.25.5",
    ]
    # Each folder whose entries changed, once: both series, the study, results/ and the root.
    series = ("results/2.25.1/2.25.2", "results/2.25.1/2.25.4")
    changed = ["store", *(f"store/{folder}" for folder in ("results", "results/2.25.1", *series))]
    assert sorted(events[first_folder:]) == sorted(f"folder {folder}" for folder in changed)
    assert (store.read(a), store.read(b)) == (b"a", b"b")


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


def test_a_staged_file_is_in_place_only_once_committed(tmp_path: Path) -> None:
    """A worker fills a result's file and goes on building while another thread commits it:
    until then the place holds the older copy; a staged file discarded leaves nothing, and
    discarding one already committed leaves it in place."""
    store = InstanceStore(tmp_path / "store")
    kept = store.result_path("2.25.1", "2.25.2", "2.25.3")
    dropped = store.result_path("2.25.1", "2.25.2", "2.25.6")
    store.write_files([(kept, _bytes(b"older"))])

    first = store.stage(kept, _bytes(b"newer"))
    second = store.stage(dropped, _bytes(b"never in place"))
    assert store.read(kept) == b"older"
    assert not store.absolute(dropped).exists()
    first.commit()
    store.sync_folders([first])
    for staged in (first, second):
        staged.discard()

    assert store.read(kept) == b"newer"
    assert [p.name for p in store.absolute(kept).parent.iterdir()] == ["2.25.3.dcm"]
    with pytest.raises(StoreError, match="already committed or discarded"):
        first.commit()
