"""No secrets in the repository; secrets reach the processes only from the environment or files.

A small scan of every tracked file (``git ls-files``) for what leaked secrets look like: private
keys, cloud and chat tokens, signed tokens, RadLight API keys, URLs with a password in them, and
secret-looking names assigned a literal outside the tests (whose passwords are test fixtures).
"""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from radlight.settings import SECRET_FIELDS, Settings
from tests.conftest import REPO_ROOT

ANYWHERE = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "signed token (JWT)": re.compile(r"\beyJ[\w-]{10,}\.eyJ[\w-]{10,}\.[\w-]{10,}"),
    "RadLight API key": re.compile(r"\brlk_[0-9a-f]{16}_[\w-]{40,}"),
    # a URL with a user and password before the host, unless the password is a ${VARIABLE}
    # or an upper-case PLACEHOLDER
    "URL with a password": re.compile(
        r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:(?![$A-Z_{]+[@}])[^@\s/'\"]{4,}@"
    ),
}
OUTSIDE_TESTS = {
    "secret assigned a literal": re.compile(
        r"(?i)\b\w*(?:secret|passw(?:or)?d|api_?key|token)\w*\s*[:=]\s*['\"]([^'\"\s$]{12,})['\"]"
    ),
}
# Literals that look like secrets and are not, each with the reason.
ALLOWED = {
    "radlight_session": "the session cookie's name",
    "radlight_login_nonce": "the login nonce cookie's name",
    "/api/v1/auth/token": "the sign-in path",
    "postgresql://radlight:test@": "tests/deploy/test_helm.py renders the chart with a fake URL",
}


def tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    files = []
    for name in filter(None, names):
        path = REPO_ROOT / name.decode()
        if (
            path.is_file()
            and path.stat().st_size < 2_000_000
            and b"\0" not in path.read_bytes()[:4096]
        ):
            files.append(path)
    return files


def find_secrets(path: Path, text: str) -> list[str]:
    rules = dict(ANYWHERE)
    if "tests" not in path.relative_to(REPO_ROOT).parts:
        rules.update(OUTSIDE_TESTS)
    found = []
    for what, pattern in rules.items():
        for match in pattern.finditer(text):
            literal = match.group(match.lastindex or 0)
            if literal in ALLOWED:
                continue
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{path.relative_to(REPO_ROOT)}:{line}: {what}")
    return found


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    planted = REPO_ROOT / "services" / "planted.py"  # a path outside tests/, never written
    # Split in the source, so that this file does not hold what it plants.
    samples = [
        "-----BEGIN EC PRIVATE" + " KEY-----",
        "aws = 'AKIA" + "ABCDEFGHIJKLMNOP'",
        "url = 'postgresql://radlight:" + "hunter2hunter2@db:5432/radlight'",
        'SECRET_KEY = "0123456789abcdef0123"',
        "token: rlk_0123456789abcdef_" + "x" * 43,
    ]
    for sample in samples:
        assert find_secrets(planted, sample), sample
    harmless = [
        "postgresql://radlight:${POSTGRES_PASSWORD:?set it}@postgres:5432/radlight",
        "postgresql://USER:PASSWORD@HOST:5432/radlight",
        "postgresql://postgres@127.0.0.1:5432/test",
        'SESSION_COOKIE = "radlight_session"',
    ]
    for sample in harmless:
        assert not find_secrets(planted, sample), sample


def test_no_tracked_file_holds_a_secret() -> None:
    files = tracked_text_files()
    assert len(files) > 100
    found = [hit for path in files for hit in find_secrets(path, path.read_text(errors="replace"))]
    assert found == []


@pytest.mark.parametrize("name", SECRET_FIELDS)
def test_secret_settings_come_from_the_environment_or_a_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "from-a-file-" + "x" * 40
    secret_file = tmp_path / name
    secret_file.write_text(value + "\n")
    monkeypatch.setenv(f"RADLIGHT_{name.upper()}_FILE", str(secret_file))
    read = getattr(Settings(data_dir=tmp_path), name)
    assert (read.get_secret_value() if hasattr(read, "get_secret_value") else read) == value
    monkeypatch.setenv(f"RADLIGHT_{name.upper()}", value)
    with pytest.raises(ValueError, match="not both"):
        Settings(data_dir=tmp_path)
    monkeypatch.delenv(f"RADLIGHT_{name.upper()}_FILE")
    assert getattr(Settings(data_dir=tmp_path), name) is not None  # the environment alone
    monkeypatch.delenv(f"RADLIGHT_{name.upper()}")
    monkeypatch.setenv(f"RADLIGHT_{name.upper()}_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="cannot read"):
        Settings(data_dir=tmp_path)


def test_the_secret_key_never_shows_in_a_repr(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="k" * 40)
    assert "k" * 40 not in repr(settings)


def test_compose_and_helm_take_secrets_by_reference() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    environment = compose["x-radlight-env"]
    for key in ("RADLIGHT_DATABASE_URL", "RADLIGHT_BROKER_URL", "RADLIGHT_SECRET_KEY"):
        assert re.search(r"\$\{[A-Z_]+:\?", environment[key]), f"{key} must be a required variable"
    values = yaml.safe_load((REPO_ROOT / "helm" / "radlight" / "values.yaml").read_text())
    assert all(value in ("", None) for value in values["secrets"].values())
    helpers = (REPO_ROOT / "helm" / "radlight" / "templates" / "_helpers.tpl").read_text()
    for key in ("RADLIGHT_SECRET_KEY", "RADLIGHT_DATABASE_URL", "RADLIGHT_BROKER_URL"):
        block = helpers[helpers.index(f"name: {key}") :][:200]
        assert "secretKeyRef" in block, key
