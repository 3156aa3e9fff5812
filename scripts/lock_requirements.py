"""Write requirements.lock: every package `pip install -e '.[dev,export]'` installs, pinned.

pip resolves pyproject.toml's dependencies with the dev and export extras (and the CPU torch the
Makefile installs first) in a throwaway virtualenv, without installing anything
(``pip install --dry-run --ignore-installed --report``); the report's versions become the lock.
The Makefile installs with ``-c requirements.lock``, so CI gets exactly these versions, and
tests/test_lock.py checks the lock still satisfies every dependency pyproject.toml declares.

No hashes: pip does not accept hashes in a constraints file, and an editable install of the
project cannot be hash-checked. Run this after changing a dependency, and commit the result.

Usage: ``python scripts/lock_requirements.py [--output PATH]`` (default: requirements.lock).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0"  # the CPU build, as the Makefile installs it
HEADER = """\
# Pinned versions of everything `pip install -e '.[dev,export]'` installs (with torch 2.13.0, CPU).
# Made by `python scripts/lock_requirements.py` (pip's resolver); do not edit by hand.
# Used as constraints by the Makefile: pip install -c requirements.lock -e '.[dev,export]'
"""


def resolve(root: Path) -> dict[str, str]:
    """{distribution name: version} that pip would install for the project, from a clean venv."""
    with tempfile.TemporaryDirectory(prefix="radlight-lock-") as folder:
        venv.create(folder, with_pip=True)
        report = Path(folder) / "report.json"
        subprocess.run(
            [
                str(Path(folder) / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--dry-run",
                "--ignore-installed",
                "--report",
                str(report),
                TORCH,
                "-e",
                f"{root}[dev,export]",
            ],
            check=True,
            timeout=1800,
        )
        installs = json.loads(report.read_text())["install"]
    return {
        item["metadata"]["name"]: item["metadata"]["version"]
        for item in installs
        if item["metadata"]["name"] != "radlight"
    }


def render(pins: dict[str, str]) -> str:
    lines = [f"{name}=={version.split('+')[0]}" for name, version in pins.items()]
    return HEADER + "\n".join(sorted(lines, key=str.lower)) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "requirements.lock")
    args = parser.parse_args()
    args.output.write_text(render(resolve(ROOT)))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
