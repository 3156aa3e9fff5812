"""docker-compose.yml: valid against the compose-spec schema, and consistent with the code.

No Docker engine runs here, so `docker compose config` cannot; the schema is the compose-spec JSON
schema that check-jsonschema ships (offline). The consistency checks are what the schema cannot
know: every command is a real `radlight` command, every queue a real queue, every setting a real
setting, and the secrets are required rather than defaulted.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from radlight import cli
from radlight.contracts import QUEUE_DELIVERY, QUEUE_INFERENCE, TASK_QUEUES
from radlight.settings import Settings
from tests.deploy.compose import (
    COMPOSE_FILE,
    MissingVariableError,
    example_env,
    interpolate,
    interpolate_tree,
    load_raw,
    radlight_services,
    required_variables,
)

SECRETS = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "RADLIGHT_SECRET_KEY"}
FILLED = {name: f"test-{name.lower()}" for name in SECRETS}
CHECK_JSONSCHEMA = str(Path(sys.executable).with_name("check-jsonschema"))


def _schema_errors(path: Path) -> str:
    """check-jsonschema's verdict on ``path`` against compose-spec; '' when valid."""
    completed = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "" if completed.returncode == 0 else completed.stdout + completed.stderr


def test_compose_file_is_valid_compose_spec(tmp_path: Path) -> None:
    assert _schema_errors(COMPOSE_FILE) == ""
    # As Compose sees it after interpolation (ports, numbers and flags are strings no longer).
    interpolated = tmp_path / "interpolated.yml"
    interpolated.write_text(yaml.safe_dump(interpolate_tree(load_raw(), FILLED)))
    assert _schema_errors(interpolated) == ""


def test_schema_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        COMPOSE_FILE.read_text().replace('    command: ["api"]', '    comand: ["api"]')
    )
    assert broken.read_text() != COMPOSE_FILE.read_text()
    assert "comand" in _schema_errors(broken)


def test_every_command_is_a_radlight_command() -> None:
    parser = cli.build_parser()
    handlers = {}
    for service in radlight_services(FILLED):
        args = parser.parse_args(service.command)  # exits (fails the test) on an unknown command
        handlers[service.name] = args.func
    assert handlers == {
        "migrate": cli.cmd_db_upgrade,
        "dicom-node": cli.cmd_dicom_node,
        "dispatcher": cli.cmd_dispatcher,
        "worker-gpu": cli.cmd_worker,
        "worker-io": cli.cmd_worker,
        "api": cli.cmd_api,
    }


def test_workers_split_the_queues_and_only_inference_gets_a_gpu() -> None:
    parser = cli.build_parser()
    raw = load_raw()["services"]
    queues = {}
    for service in radlight_services(FILLED):
        args = parser.parse_args(service.command)
        if args.func is cli.cmd_worker:
            queues[service.name] = set(args.queues.split(","))
    assert queues == {"worker-gpu": {QUEUE_INFERENCE}, "worker-io": {QUEUE_DELIVERY}}
    assert set().union(*queues.values()) == set(TASK_QUEUES.values())
    devices = raw["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert raw["worker-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    # The GPU worker runs its jobs in threads of one process and batches their images.
    gpu = parser.parse_args(raw["worker-gpu"]["command"])
    assert (gpu.pool, gpu.concurrency) == ("threads", 8)
    assert raw["worker-gpu"]["environment"]["RADLIGHT_INFERENCE_BATCH_MAX"] == "8"
    precision = raw["worker-gpu"]["environment"]["RADLIGHT_INFERENCE_PRECISION"]
    assert Settings(inference_precision=precision).inference_precision == "fp16"
    assert all("deploy" not in raw[name] for name in raw if name != "worker-gpu")


def test_one_dispatcher_and_nodes_without_assembler() -> None:
    parser = cli.build_parser()
    parsed = {s.name: parser.parse_args(s.command) for s in radlight_services(FILLED)}
    assert [n for n, a in parsed.items() if a.func is cli.cmd_dispatcher] == ["dispatcher"]
    assert parsed["dispatcher"].heartbeat is not None
    assert parsed["dicom-node"].no_assembler


def test_every_radlight_variable_is_a_setting() -> None:
    known = {f"RADLIGHT_{name.upper()}" for name in Settings.model_fields}
    for service in radlight_services(FILLED):
        radlight_vars = {k for k in service.environment if k.startswith("RADLIGHT_")}
        assert radlight_vars <= known, f"{service.name}: unknown {radlight_vars - known}"
        assert service.environment["RADLIGHT_DATA_DIR"] == "/data"
        assert service.environment["RADLIGHT_DATABASE_URL"].startswith("postgresql://")
        assert service.environment["RADLIGHT_BROKER_URL"].startswith("redis://")


def test_secrets_are_required_and_none_is_committed() -> None:
    text = COMPOSE_FILE.read_text()
    assert required_variables(text) == SECRETS
    for missing in SECRETS:
        env = {k: v for k, v in FILLED.items() if k != missing}
        with pytest.raises(MissingVariableError, match=missing):
            interpolate(text, env)
    example = example_env()
    assert {name: example.get(name) for name in SECRETS} == dict.fromkeys(SECRETS, "")
    # The optional variables the file reads are documented in the example too.
    optional = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):-", text))
    assert optional <= set(example), optional - set(example)


def test_services_start_in_order_and_share_the_store() -> None:
    raw = load_raw()["services"]
    assert raw["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "healthcheck" in raw["redis"]
    assert "noeviction" in raw["redis"]["command"]
    assert raw["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for service in radlight_services(FILLED):
        if service.name != "migrate":
            assert service.depends_on["migrate"] == "service_completed_successfully"
        assert "store:/data" in raw[service.name]["volumes"], service.name
    assert raw["dicom-node"]["ports"] == ["${RADLIGHT_DICOM_PUBLISH:-11112}:11112"]
    assert raw["orthanc"]["profiles"] == ["demo-pacs"]
