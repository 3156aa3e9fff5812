"""The images' health check (scripts/healthcheck.py) without containers: which process it finds
and what it calls unhealthy. Its checks against live processes run in test_process_set.py."""

import importlib.util
import os
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT
from tests.peers import free_port


def _load() -> ModuleType:
    # Loaded from its file: it is a script copied into the image, not a package module.
    spec = importlib.util.spec_from_file_location(
        "healthcheck", REPO_ROOT / "scripts" / "healthcheck.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["tini", "--", "radlight", "dicom-node", "--no-assembler"],
            ["dicom-node", "--no-assembler"],
        ),
        (["/opt/radlight/bin/python", "-m", "radlight", "api"], ["api"]),
        (
            ["dispatcher", "--heartbeat", "/tmp/radlight"],
            ["dispatcher", "--heartbeat", "/tmp/radlight"],
        ),
    ],
)
def test_finds_the_radlight_command(argv: list[str], expected: list[str]) -> None:
    assert healthcheck.process_args(argv) == expected


def test_reads_the_container_command_from_pid_1(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"tini\0--\0radlight\0worker\0--hostname\0io@%h\0")
    assert healthcheck.pid1_args(cmdline) == ["worker", "--hostname", "io@%h"]


def test_dispatcher_is_unhealthy_without_a_fresh_heartbeat(tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    args = ["radlight", "dispatcher", "--heartbeat", str(beat)]
    assert healthcheck.main(args) == 1  # no file yet
    beat.touch()
    assert healthcheck.main(args) == 0
    old = time.time() - 600
    os.utime(beat, (old, old))
    assert healthcheck.main(args) == 1
    assert healthcheck.main(["radlight", "dispatcher"]) == 1  # nothing to check is not healthy


def test_api_and_node_are_unhealthy_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    port = str(free_port())
    monkeypatch.setenv("RADLIGHT_API_PORT", port)
    monkeypatch.setenv("RADLIGHT_DICOM_PORT", port)
    assert healthcheck.main(["radlight", "api"]) == 1
    assert healthcheck.main(["radlight", "dicom-node"]) == 1


def test_one_off_commands_have_nothing_to_check() -> None:
    assert healthcheck.main(["radlight", "db", "upgrade"]) == 0
