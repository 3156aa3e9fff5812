"""End-to-end latency: one single-image study sent with storescu → its results stored in Orthanc.

The full stack on this machine (bench/stack.py): private Redis, PostgreSQL or SQLite, a real
``radlight dicom-node``, a real Celery worker process with the untrained DenseNet-121 (CPU), Orthanc
as the destination. Studies go one at a time; each latency runs from just before storescu starts to
the ``sent_at`` of the study's last delivery (RadLight records it when Orthanc has answered the
C-STORE, i.e. stored it). Printed: p50/p95 per configuration and backend, and the median of every
stage the job recorded (``Job.stage_ms``), plus ``send`` (storescu start → instance recorded).

Configurations (each a before → after of the optimisations in docs/PERFORMANCE.md):

- ``quiet``: the study is complete after the quiet period; assembler tick 1 s without the short
  poll; every delivery a task of its own. The configured quiet period is SUBTRACTED from each
  latency (the goal excludes it).
- ``expected``: the route expects 1 instance, so the study is complete when it arrived; the
  assembler finds it as the tree under test does by default (since the wake-ups of
  dicom_node/wakeup.py: woken by the C-STORE handler; before them: a query every 20 ms);
  deliveries still one task each.
- ``inline`` (the default configuration): as ``expected``, and the job's worker sends its results
  itself over a kept-open association (TCP_NODELAY), all in one association.

The reference, in the same run (``--no-reference`` leaves it out): the same bytes moved by dcmtk
alone, with no processing. After each study, storescu sends the study's file to a storescp and
then the job's result files (copies with new SOP Instance UIDs, made before the clock starts) to
the same Orthanc in one association; that time is the floor a node adds nothing to. Printed: its
p50 and the ratio of RadLight's p50 to it, which moves far less with the machine's speed than
either figure alone.

The studies are copies of the real 1024² 8-bit NIH DICOM; ``--size 2048`` sends it resampled to
a 12-bit 2048² DX (8.4 MB, issue 8's reference image, made as ``bench/bench_ingest.py`` makes its
instances) instead.

Run: ``python bench/bench_e2e.py`` (``--studies 20 --backends postgresql sqlite``).
"""

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pydicom

from bench.bench_ingest import AE_TITLE, make_instances, storescp
from bench.stack import (
    SOURCE,
    Stack,
    build_models,
    delivered_files,
    first_received,
    full_stack,
    job_stages,
    machine,
    make_studies,
    median,
    now,
    percentile,
    renamed_copies,
    send_one,
    stopwatch,
)
from radlight.stages import STAGES
from tests.peers import storescu

QUIET_S = 1.0
CONFIGS: dict[str, tuple[int | None, dict[str, str]]] = {
    "quiet": (
        None,
        {
            "RADLIGHT_ASSEMBLER_INTERVAL_S": "1.0",
            "RADLIGHT_ASSEMBLER_POLL_S": "1.0",
            "RADLIGHT_DELIVERY_INLINE": "false",
        },
    ),
    "expected": (
        1,
        {
            "RADLIGHT_ASSEMBLER_INTERVAL_S": "1.0",
            "RADLIGHT_DELIVERY_INLINE": "false",
        },
    ),
    "inline": (
        1,
        {
            "RADLIGHT_ASSEMBLER_INTERVAL_S": "1.0",
            "RADLIGHT_DELIVERY_INLINE": "true",
        },
    ),
}


def studies(folder: Path, count: int, size: int) -> list[tuple[str, Path]]:
    """``count`` single-image studies: the real image as it is (``size`` 0) or resampled."""
    if not size:
        return make_studies(folder, count)
    paths = make_instances(SOURCE, size, count, folder)
    return [(str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID), p) for p in paths]


def dcmtk_floor_ms(stack: Stack, relay_port: int, study: Path, results: Sequence[Path]) -> float:
    """storescu sends the study to storescp, then the results to the PACS: the same bytes over
    the same hops, with no processing between (the reference)."""
    start = stopwatch()
    received = storescu(relay_port, study, called_ae=AE_TITLE)
    delivered = storescu(
        stack.orthanc.dicom_port, *results, called_ae=stack.orthanc.ae_title, calling_ae="RADLIGHT"
    )
    elapsed = (stopwatch() - start) * 1e3
    for done in (received, delivered):
        if done.returncode != 0:
            raise RuntimeError(f"storescu failed: {done.stdout}{done.stderr}")
    return elapsed


def run(
    workdir: Path,
    models: Path,
    backend: str,
    config: str,
    count: int,
    size: int,
    reference: bool,
) -> None:
    expected, settings = CONFIGS[config]
    quiet = 0.0 if expected is not None else QUIET_S
    (workdir / "relay").mkdir(parents=True)
    with (
        full_stack(
            workdir,
            models,
            backend=backend,
            expected_instances=expected,
            quiet_s=QUIET_S,
            settings=settings,
        ) as stack,
        storescp(workdir / "relay", max_pdu=16384, fsync=False) as relay,
    ):
        latencies: list[float] = []
        floors: list[float] = []
        sends: list[float] = []
        uids: list[str] = []
        for index, (study_uid, path) in enumerate(studies(workdir / "studies", count, size)):
            start = now()
            done = send_one(stack, study_uid, path)
            latencies.append((done - start).total_seconds() - quiet)
            sends.append((first_received(stack.engine, study_uid) - start).total_seconds() * 1e3)
            uids.append(study_uid)
            if reference:
                results = delivered_files(stack, study_uid)
                copies = renamed_copies(results, workdir / "reference" / str(index))
                floors.append(dcmtk_floor_ms(stack, relay.port, path, copies))
        stored = len(stack.orthanc.get("/instances"))
        stages = job_stages(stack.engine, uids)
    assembled = [s.get("assemble", 0.0) - quiet * 1e3 for s in stages]
    breakdown = {name: median([s.get(name, 0.0) for s in stages]) for name in STAGES}
    breakdown["assemble"] = median(assembled)
    print(
        f"| {backend} | {config} | {count} | {percentile(latencies, 50) * 1e3:.0f} | "
        f"{percentile(latencies, 95) * 1e3:.0f} | {median(sends):.0f} | "
        + " | ".join(f"{breakdown[name]:.0f}" for name in STAGES)
        + f" | {stored} | "
        + (
            f"{median(floors):.0f} | {percentile(latencies, 50) * 1e3 / median(floors):.2f} |"
            if floors
            else "- | - |"
        ),
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--backends", nargs="+", default=["postgresql", "sqlite"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--size", type=int, default=0, help="resample to a SIZE² 12-bit DX (0: the 1024² original)"
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="leave out the dcmtk reference (storescu → storescp, storescu → Orthanc)",
    )
    args = parser.parse_args()
    what = f"{args.size}² 12-bit DX" if args.size else "the 1024² 8-bit NIH DICOM"
    print(f"# end to end, single-image studies ({what}) one at a time; {machine()}")
    print(f"# quiet period {QUIET_S} s, subtracted from latencies where it applies ('quiet')")
    print("# milliseconds; stage columns are medians of Job.stage_ms ('assemble' less the quiet)")
    print(
        "# dcmtk floor: p50 of storescu → storescp (the study) + storescu → Orthanc (its results)"
    )
    header = ["backend", "config", "studies", "p50", "p95", "send", *STAGES, "in Orthanc"]
    header += ["dcmtk floor", "p50 / floor"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory(prefix="radlight-bench-e2e-") as tmp:
        root = Path(tmp)
        models = build_models(root)
        for backend in args.backends:
            for config in args.configs:
                run(
                    root / f"{backend}-{config}",
                    models,
                    backend,
                    config,
                    args.studies,
                    args.size,
                    args.reference,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
