"""The Dockerfiles, read with BuildKit's own parser (the `dockerfile` package): no engine runs here to
build them, so check what a build would trip on and what the runtime promises.
"""

import re
import tomllib
from pathlib import Path

import dockerfile  # type: ignore[import-not-found]  # a compiled module without stubs
import pytest

from tests.conftest import REPO_ROOT
from tests.deploy.compose import load_raw

DOCKERFILES = [REPO_ROOT / "docker" / "Dockerfile", REPO_ROOT / "docker" / "Dockerfile.gpu"]


def _final_stage(commands: tuple[dockerfile.Command, ...]) -> list[dockerfile.Command]:
    starts = [i for i, command in enumerate(commands) if command.cmd == "FROM"]
    return list(commands[starts[-1] :])


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex over a relative path."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether the build context leaves out ``path``: the last pattern that matches it, or one
    of its parent folders, decides (as in moby's patternmatcher)."""
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_matcher_follows_docker_rules() -> None:
    # The matcher itself, on cases whose answer is known from the file: can fail if it is wrong.
    assert dockerignored("tests/conftest.py")
    assert dockerignored(".venv/bin/python")
    assert dockerignored("radlight/__pycache__/cli.cpython-311.pyc")
    assert not dockerignored("radlight/cli.py")
    assert not dockerignored("scripts/healthcheck.py")
    assert dockerignored("scripts/demo.py")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_builds_from_what_the_context_holds(path: Path) -> None:
    commands = dockerfile.parse_file(str(path))
    copied: set[str] = set()
    for command in commands:
        if command.cmd in ("COPY", "ADD") and not any(
            f.startswith("--from") for f in command.flags
        ):
            for source in command.value[:-1]:
                assert (REPO_ROOT / source).exists(), f"{path.name}: {source} does not exist"
                assert not dockerignored(source), f"{path.name}: .dockerignore drops {source}"
                copied.add(source)
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages | {"pyproject.toml", "README.md"} <= copied


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_radlight_as_non_root_with_a_health_check(path: Path) -> None:
    final = _final_stage(dockerfile.parse_file(str(path)))
    by_cmd = {command.cmd: command for command in final}
    user = by_cmd["USER"].value[0].split(":")[0]
    assert user.isdigit()
    assert int(user) != 0
    assert by_cmd["ENTRYPOINT"].json
    assert by_cmd["ENTRYPOINT"].value[-1] == "radlight"
    health = by_cmd["HEALTHCHECK"]
    assert health.value[0] == "CMD"
    assert health.value[-1] == "/opt/radlight/healthcheck.py"
    assert "COPY scripts/healthcheck.py /opt/radlight/healthcheck.py" in [c.original for c in final]
    env = dict(zip(by_cmd["ENV"].value[::2], by_cmd["ENV"].value[1::2], strict=True))
    assert env["RADLIGHT_DATA_DIR"] == "/data"


def test_gpu_image_has_onnxruntime_gpu_on_a_cuda_runtime() -> None:
    commands = dockerfile.parse_file(str(DOCKERFILES[1]))
    args = {
        c.value[0].split("=")[0]: c.value[0].split("=", 1)[1] for c in commands if c.cmd == "ARG"
    }
    base = args["CUDA_IMAGE"]
    assert base.startswith("nvidia/cuda:")
    assert "cudnn-runtime" in base
    build = " ".join(c.value[0] for c in commands if c.cmd == "RUN")
    assert "pip uninstall -y onnxruntime" in build
    assert "onnxruntime-gpu" in build
    assert "CUDAExecutionProvider" in build


def test_compose_builds_with_these_dockerfiles() -> None:
    services = load_raw()["services"]
    dockerfiles = {s["build"]["dockerfile"] for s in services.values() if "build" in s}
    assert dockerfiles == {str(p.relative_to(REPO_ROOT)) for p in DOCKERFILES}
