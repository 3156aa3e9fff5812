"""docker-compose.yml as data, for the tests that check it and the test that runs its processes.

No Docker engine runs here, so these helpers do the two things Compose does before it starts a
container that the tests need: variable interpolation (``${VAR}``, ``${VAR:-default}``,
``${VAR:?error}``, ``$$``) and resolving YAML merge keys (PyYAML's safe loader does that).
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from tests.conftest import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / "radlight.env.example"
# The one image every RadLight service runs, whatever its tag or flavour.
RADLIGHT_IMAGE_PREFIX = "${RADLIGHT_IMAGE:-radlight}:"

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\})"
)


class MissingVariableError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty: Compose refuses to start."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one string (the subset this project's file uses)."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        value = env.get(match["name"], "")
        if match["op"] == ":-":
            return value or match["arg"]
        if match["op"] == ":?" and not value:
            raise MissingVariableError(f"{match['name']}: {match['arg']}")
        return value

    return _VARIABLE.sub(replace, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def required_variables(text: str) -> set[str]:
    """Variables the file needs set (``${VAR:?...}``)."""
    return {m["name"] for m in _VARIABLE.finditer(text) if m["op"] == ":?"}


def load_raw() -> dict[str, Any]:
    """The file with merge keys resolved and nothing interpolated."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@dataclass(frozen=True)
class RadLightService:
    """One service that runs the RadLight image: its name, command and settings."""

    name: str
    command: list[str]
    environment: dict[str, str]
    depends_on: dict[str, str]  # service -> condition


def radlight_services(env: Mapping[str, str]) -> list[RadLightService]:
    """The services that run RadLight, interpolated with ``env``, in the file's order."""
    services: dict[str, Any] = load_raw()["services"]
    found = []
    for name, raw in services.items():
        if not str(raw.get("image", "")).startswith(RADLIGHT_IMAGE_PREFIX):
            continue
        service = interpolate_tree(raw, env)
        depends = service.get("depends_on", {})
        found.append(
            RadLightService(
                name=name,
                command=[str(part) for part in service["command"]],
                environment={k: str(v) for k, v in service.get("environment", {}).items()},
                depends_on={k: v["condition"] for k, v in depends.items()},
            )
        )
    return found


def example_env() -> dict[str, str]:
    """The variables radlight.env.example sets or shows (commented out), with their values."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            values[match[1]] = match[2]
    return values
