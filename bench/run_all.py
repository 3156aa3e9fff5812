"""Run every benchmark in bench/ in turn."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    status = 0
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"## {script.stem}", flush=True)
        # As a module from the checkout's root, so the benchmarks import bench.stack and tests.peers.
        command = [sys.executable, "-m", f"bench.{script.stem}"]
        status |= subprocess.run(command, cwd=HERE.parent, check=False).returncode
    return status


if __name__ == "__main__":
    raise SystemExit(main())
