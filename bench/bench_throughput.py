"""Throughput: single-image studies per hour through the whole stack, with 1 and 2 workers.

The full stack of bench/stack.py (private Redis, PostgreSQL or SQLite, ``radlight dicom-node``,
Celery workers, Orthanc), senders and PACS all on this machine. ``--senders`` storescu processes
send ``--studies`` single-image studies as fast as they are accepted; the clock runs from the first
send to the last study's results stored in Orthanc (its last delivery's ``sent_at``). The route
expects one instance per study and results are sent by the job's worker (the defaults).

The reference, in the same stack after RadLight's run (``--no-reference`` leaves it out): the same
bytes moved by dcmtk alone. ``--senders`` storescu processes send the same studies to a storescp
while, at the same time, one storescu per worker process sends the jobs' result files (copies with
new SOP Instance UIDs) to the same Orthanc, one association per study, as RadLight's workers do.
Its studies/hour is what moving the data costs on this machine with no processing; RadLight's
rate divided by it moves far less with the machine's speed than either rate alone.

Prints studies/hour per worker count; the goal is ≥ 20,000. ``--pool threads`` runs the
``--workers`` jobs in threads of one worker process (the GPU layout) and ``--batch N`` turns on
dynamic batching across them (``RADLIGHT_INFERENCE_BATCH_MAX``). Run:
``python -m bench.bench_throughput`` (``--studies 200 --workers 1 2 --backend postgresql``).
"""

import argparse
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from bench.bench_ingest import AE_TITLE, storescp
from bench.stack import (
    Stack,
    all_delivered,
    build_models,
    delivered_files,
    full_stack,
    job_stages,
    machine,
    make_studies,
    median,
    now,
    renamed_copies,
    stopwatch,
)
from radlight.stages import STAGES
from tests.peers import storescu, wait_for


def in_parallel(send: Callable[[list[Path]], None], batches: list[list[Path]], ways: int) -> None:
    """``ways`` threads, each calling ``send`` for its share of ``batches`` in turn."""
    errors: list[BaseException] = []

    def sender(share: list[list[Path]]) -> None:
        try:
            for batch in share:
                send(batch)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(batches[i::ways],)) for i in range(ways)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def send_all(stack: Stack, files: list[Path], senders: int) -> None:
    """``senders`` threads, each running storescu for its share, one study per association."""
    in_parallel(lambda batch: stack.send(*batch), [[path] for path in files], senders)


def checked(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stdout}{done.stderr}")


def dcmtk_rate(
    stack: Stack,
    workdir: Path,
    studies: list[Path],
    results: list[list[Path]],
    senders: int,
    workers: int,
) -> float:
    """Studies per hour when dcmtk alone moves the studies in (to a storescp) and their results
    out (to the PACS), both at once, with the benchmark's concurrency (the reference)."""
    (workdir / "relay").mkdir(parents=True)
    with storescp(workdir / "relay", max_pdu=16384, fsync=False) as relay:

        def receive(batch: list[Path]) -> None:
            checked(storescu(relay.port, *batch, called_ae=AE_TITLE))

        def deliver(batch: list[Path]) -> None:
            pacs = stack.orthanc
            checked(storescu(pacs.dicom_port, *batch, called_ae=pacs.ae_title, calling_ae="RL"))

        start = stopwatch()
        inbound = threading.Thread(
            target=in_parallel, args=(receive, [[path] for path in studies], senders)
        )
        inbound.start()
        in_parallel(deliver, results, workers)
        inbound.join()
        elapsed = stopwatch() - start
    return len(studies) / elapsed * 3600


def run(
    workdir: Path,
    models: Path,
    backend: str,
    workers: int,
    count: int,
    senders: int,
    reference: bool,
    pool: str = "prefork",
    batch: int = 1,
) -> None:
    settings = {"RADLIGHT_INFERENCE_BATCH_MAX": str(batch)}
    with full_stack(
        workdir, models, backend=backend, workers=workers, pool=pool, settings=settings
    ) as stack:
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
        floor = 0.0
        if reference:
            copies = [
                renamed_copies(delivered_files(stack, uid), workdir / "reference" / str(index))
                for index, uid in enumerate(uids)
            ]
            files = [path for _, path in studies]
            floor = dcmtk_rate(stack, workdir, files, copies, senders, workers)
    per_hour = count / elapsed * 3600
    waits = median([s.get("queue_wait", 0.0) for s in stages])
    work = median(
        [
            sum(v for k, v in s.items() if k not in ("receive", "assemble", "queue_wait"))
            for s in stages
        ]
    )
    print(
        f"| {backend} | {workers} {pool}, batch {batch} | {senders} | {count} | {elapsed:.1f} | "
        f"{(sent - start).total_seconds():.1f} | {per_hour:,.0f} | {work:.0f} | {waits:.0f} | "
        f"{stored} | " + (f"{floor:,.0f} | {per_hour / floor:.2f} |" if floor else "- | - |"),
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--backend", default="postgresql", choices=["postgresql", "sqlite"])
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="leave out the dcmtk reference (the same studies in and results out by storescu)",
    )
    parser.add_argument(
        "--pool",
        default="prefork",
        choices=["prefork", "threads"],
        help="the worker's pool: --workers processes, or one process running --workers jobs",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="RADLIGHT_INFERENCE_BATCH_MAX (dynamic batching; with --pool threads)",
    )
    args = parser.parse_args()
    print(f"# throughput, single-image studies; {machine()}")
    print(f"# worker time = median of the job's own stages ({', '.join(list(STAGES)[3:])}) in ms")
    print(
        "| backend | jobs at once (pool, batch) | senders | studies | seconds | sending s | "
        "studies/hour | worker ms/job | queue wait ms | in Orthanc | dcmtk studies/hour | RadLight / dcmtk |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="radlight-bench-tp-") as tmp:
        root = Path(tmp)
        models = build_models(root)
        for workers in args.workers:
            run(
                root / f"w{workers}",
                models,
                args.backend,
                workers,
                args.studies,
                args.senders,
                args.reference,
                args.pool,
                args.batch,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
