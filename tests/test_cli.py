"""The `radlight` CLI as a user runs it: init, models, destinations, routes, status, bad settings."""

import os
import subprocess
import sys
from pathlib import Path

from tests.peers import radlight


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLIGHT_")}
    env.update(RADLIGHT_DATA_DIR=str(tmp_path / "data"), RADLIGHT_LOG_JSON="false", **extra)
    return env


def test_init_on_embedded_defaults_then_configure(tmp_path: Path) -> None:
    env = _env(tmp_path)
    out = radlight(env, "init", "--model", "tiny")
    assert "installed model" in out
    assert "added route chest-xray" in out
    assert (tmp_path / "data" / "radlight.db").is_file()
    (listed,) = radlight(env, "models", "list").splitlines()
    name, version, sha_prefix, trained = listed.split()
    assert trained == "UNTRAINED"
    assert len(sha_prefix) == 12
    # A second init changes nothing.
    again = radlight(env, "init")
    assert "installed model" not in again
    assert "added route" not in again
    radlight(
        env,
        "destinations",
        "add",
        "pacs",
        "--host",
        "127.0.0.1",
        "--port",
        "104",
        "--ae-title",
        "PACS",
    )
    radlight(
        env,
        "routes",
        "add",
        "chest-xray",
        "--model",
        name,
        "--model-version",
        version,
        "--destination",
        "pacs",
    )
    status = radlight(env, "status")
    assert "studies: none" in status
    assert "refused instances: 0" in status


def test_bad_input_gets_a_clear_error_and_an_exit_code(tmp_path: Path) -> None:
    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "radlight", *args],
            env=_env(tmp_path, **extra),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    bad_port = run("status", RADLIGHT_DICOM_PORT="eleven")
    assert bad_port.returncode == 2
    assert "dicom_port" in bad_port.stderr

    bad_cap = run("status", RADLIGHT_OVERLAY_MAX_SIDE="-1")
    assert bad_cap.returncode == 2
    assert "overlay_max_side" in bad_cap.stderr

    bad_ae = run("status", RADLIGHT_AE_TITLE="A\\B")
    assert bad_ae.returncode == 2
    assert "AE title" in bad_ae.stderr

    radlight(_env(tmp_path), "db", "upgrade")
    unknown = run("routes", "add", "r", "--model", "m", "--destination", "nowhere")
    assert unknown.returncode != 0
    assert "unknown destination(s): nowhere" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    assert run("no-such-command").returncode == 2
