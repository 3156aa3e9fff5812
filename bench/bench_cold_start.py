"""A worker's first job after it starts, against its later (warm) jobs, end to end.

The full stack of bench/stack.py without its warm-up study: the worker (``--concurrency 1``) is
started, answers a Celery ping, and is left ``--settle`` seconds, as a worker is started before
the studies come; then ``--studies`` single-image studies go one at a time, as in
bench/bench_e2e.py (inline delivery, route expecting one instance). Printed per round: the first
study's latency and its stages beside the medians of the later ones, and first / warm. A new
worker child (a start, a scale-up, a recycled child) pays whatever its first job does that the
later ones do not: the reference is the same worker's warm jobs, in the same run.

Run: ``python -m bench.bench_cold_start`` (``--rounds 3 --studies 6 --backend postgresql``).
"""

import argparse
import tempfile
import time
from pathlib import Path

from bench.stack import (
    Stack,
    build_models,
    full_stack,
    job_stages,
    machine,
    make_studies,
    median,
    now,
    send_one,
)
from radlight.queue import make_celery
from radlight.settings import Settings
from radlight.stages import STAGES
from tests.peers import wait_for

SHOWN = ("queue_wait", "decode", "inference", "build", "deliver")
# The job's own stages (the worker's); the rest of a latency is sending, the node, the queue.
OWN = ("decode", "preprocess", "inference", "cam", "build", "deliver")


def own_ms(stages: dict[str, float]) -> float:
    return sum(stages.get(name, 0.0) for name in OWN)


def wait_for_worker(stack: Stack) -> None:
    """Until the worker answers a ping over the broker: its pool is up and consuming."""
    app = make_celery(Settings(broker_url=stack.env["RADLIGHT_BROKER_URL"]), name="bench-ping")
    try:
        wait_for(lambda: app.control.ping(timeout=0.5), timeout=120, what="the worker's ping")
    finally:
        app.close()


def one_round(workdir: Path, models: Path, backend: str, count: int, settle_s: float) -> None:
    settings = {"RADLIGHT_DELIVERY_INLINE": "true", "RADLIGHT_ASSEMBLER_INTERVAL_S": "1.0"}
    with full_stack(
        workdir, models, backend=backend, workers=1, settings=settings, warm_up=False
    ) as stack:
        wait_for_worker(stack)
        time.sleep(settle_s)
        latencies: list[float] = []
        uids: list[str] = []
        for study_uid, path in make_studies(workdir / "studies", count):
            start = now()
            done = send_one(stack, study_uid, path, timeout=120)
            latencies.append((done - start).total_seconds() * 1e3)
            uids.append(study_uid)
        stages = {uid: job_stages(stack.engine, [uid])[0] for uid in uids}
    first, warm = stages[uids[0]], [stages[uid] for uid in uids[1:]]
    warm_latency = median(latencies[1:])
    cells = [f"{latencies[0]:.0f}", f"{warm_latency:.0f}", f"{latencies[0] / warm_latency:.2f}"]
    warm_own = median([own_ms(s) for s in warm])
    warm_rest = median(
        [latency - own_ms(s) for latency, s in zip(latencies[1:], warm, strict=True)]
    )
    cells.append(f"{own_ms(first):.0f} / {warm_own:.0f}")
    cells.append(f"{latencies[0] - own_ms(first):.0f} / {warm_rest:.0f}")
    for name in SHOWN:
        cells.append(f"{first.get(name, 0.0):.0f} / {median([s.get(name, 0.0) for s in warm]):.0f}")
    print(f"| {backend} | " + " | ".join(cells) + " |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh stacks, one first job each")
    parser.add_argument("--studies", type=int, default=6, help="per round: the first + warm ones")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the ping")
    parser.add_argument("--backend", default="postgresql", choices=["postgresql", "sqlite"])
    args = parser.parse_args()
    if args.studies < 2:
        parser.error("--studies must be at least 2: the first job and a warm one")
    print(f"# a worker's first job against its warm ones; {machine()}")
    print(
        "# ms; cells 'first / median of the warm jobs': worker = the job's own stages "
        "(Job.stage_ms, decode to deliver), rest = the latency less those (send, node, queue)"
    )
    header = ["backend", "first", "warm", "first / warm", "worker", "rest", *SHOWN]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    assert set(OWN) <= set(STAGES)
    assert set(SHOWN) <= set(STAGES)
    with tempfile.TemporaryDirectory(prefix="radlight-bench-cold-") as tmp:
        root = Path(tmp)
        models = build_models(root)
        for index in range(args.rounds):
            one_round(root / f"round{index}", models, args.backend, args.studies, args.settle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
