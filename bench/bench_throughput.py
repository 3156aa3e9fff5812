"""Throughput: single-image studies per hour through the whole stack, with 1 and 2 workers.

The full stack of bench/stack.py (private Redis, PostgreSQL or SQLite, ``radlight dicom-node``,
Celery workers, Orthanc), senders and PACS all on this machine. ``--senders`` storescu processes
send ``--studies`` single-image studies as fast as they are accepted; the clock runs from the first
send to the last study's results stored in Orthanc (its last delivery's ``sent_at``). The route
expects one instance per study and results are sent by the job's worker (the defaults).

Prints studies/hour per worker count; the goal is ≥ 20,000. Run:
``python -m bench.bench_throughput`` (``--studies 200 --workers 1 2 --backend postgresql``).
"""

import argparse
import tempfile
import threading
from pathlib import Path

from bench.stack import (
    Stack,
    all_delivered,
    build_models,
    full_stack,
    job_stages,
    machine,
    make_studies,
    median,
    now,
)
from radlight.stages import STAGES
from tests.peers import wait_for


def send_all(stack: Stack, files: list[Path], senders: int) -> None:
    """``senders`` threads, each running storescu for its share, one study per association."""
    errors: list[BaseException] = []

    def sender(share: list[Path]) -> None:
        try:
            for path in share:
                stack.send(path)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(files[i::senders],)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def run(workdir: Path, models: Path, backend: str, workers: int, count: int, senders: int) -> None:
    with full_stack(workdir, models, backend=backend, workers=workers) as stack:
        studies = make_studies(workdir / "studies", count)
        uids = [uid for uid, _ in studies]
        start = now()
        send_all(stack, [path for _, path in studies], senders)
        sent = now()
        done = wait_for(
            lambda: all_delivered(stack.engine, uids),
            timeout=60 + count * 5,
            interval=0.5,
            what="every study's results in Orthanc",
        )
        elapsed = (max(done.values()) - start).total_seconds()
        stages = job_stages(stack.engine, uids)
        stored = len(stack.orthanc.get("/instances"))
    per_hour = count / elapsed * 3600
    waits = median([s.get("queue_wait", 0.0) for s in stages])
    work = median(
        [
            sum(v for k, v in s.items() if k not in ("receive", "assemble", "queue_wait"))
            for s in stages
        ]
    )
    print(
        f"| {backend} | {workers} | {senders} | {count} | {elapsed:.1f} | "
        f"{(sent - start).total_seconds():.1f} | {per_hour:,.0f} | {work:.0f} | {waits:.0f} | "
        f"{stored} |",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--backend", default="postgresql", choices=["postgresql", "sqlite"])
    args = parser.parse_args()
    print(f"# throughput, single-image studies; {machine()}")
    print(f"# worker time = median of the job's own stages ({', '.join(list(STAGES)[3:])}) in ms")
    print(
        "| backend | workers | senders | studies | seconds | sending s | studies/hour | "
        "worker ms/job | queue wait ms | in Orthanc |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="radlight-bench-tp-") as tmp:
        root = Path(tmp)
        models = build_models(root)
        for workers in args.workers:
            run(root / f"w{workers}", models, args.backend, workers, args.studies, args.senders)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
