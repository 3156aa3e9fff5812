"""requirements.lock pins every dependency pyproject.toml declares, within its range, and the
Makefile installs with it (scripts/lock_requirements.py makes the lock)."""

import re
import tomllib
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO_ROOT

LOCKED_EXTRAS = ("dev", "export")  # "gpu" is not locked: it needs a CUDA machine to resolve


def lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.!+-]*)", line)
        assert match is not None, f"not a plain pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{name} pinned twice"
        pins[name] = Version(match[2])
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    texts = project["dependencies"] + [text for extra in LOCKED_EXTRAS for text in extras[extra]]
    return [Requirement(text) for text in texts]


def extra_requirements(requirement: Requirement) -> list[Requirement]:
    """What ``name[extra]`` adds, read from the installed distribution's own metadata."""
    added = []
    for text in metadata.requires(requirement.name) or []:
        dependency = Requirement(text)
        for extra in requirement.extras:
            environment = {k: str(v) for k, v in default_environment().items()} | {"extra": extra}
            marker = dependency.marker
            if marker is not None and "extra" in str(marker) and marker.evaluate(environment):
                added.append(dependency)
    return added


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = lock()
    problems = []
    for requirement in declared():
        for needed in [requirement, *extra_requirements(requirement)]:
            name = canonicalize_name(needed.name)
            if name not in pins:
                problems.append(f"{needed} is not in requirements.lock")
            elif not needed.specifier.contains(pins[name], prereleases=True):
                problems.append(f"{needed} is not satisfied by the pin {pins[name]}")
    assert problems == []


def test_the_lock_pins_the_cpu_torch_the_makefile_installs() -> None:
    assert lock()["torch"] == Version("2.13.0")
    assert not any(name.startswith("nvidia-") for name in lock())  # no CUDA wheels


def test_the_makefile_installs_with_the_lock() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "-q" in line]
    package_installs = [line for line in installs if "--upgrade pip" not in line]
    assert package_installs
    assert all("-c requirements.lock" in line for line in package_installs), package_installs
