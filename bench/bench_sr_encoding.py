"""Encoding the findings SR to bytes: pydicom's writer against ``workers.results.encoding``.

On the real 1024² DX with the untrained DenseNet-121, a job's results are built as the worker
builds them (``build_results``), once with every finding present (threshold 0: 14 findings, each
with a region) and once at the card's thresholds (a few present); then the SR is written both
ways, alternating run by run in this one process: ``save_as(buffer, enforce_file_format=True)``
(what the pipeline did) and ``encode`` (what it does). It first checks the bytes are the same.
Medians in milliseconds.

Run::

    python -m bench.bench_sr_encoding --runs 50
"""

import argparse
import atexit
import datetime
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pydicom

from bench.bench_images import DX, DX_FILE, build_untrained_densenet
from models.registry import ModelRegistry
from workers.analysis import (
    AnalysedImage,
    JobIdentity,
    ResultOptions,
    algorithm_of,
    build_results,
    run_model,
)
from workers.imaging import load_frontal_chest
from workers.results.encoding import encode

WHEN = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)


def with_pydicom(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def elements(dataset: pydicom.Dataset) -> int:
    return sum(1 for _ in dataset.iterall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="models folder (default: built here)")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if args.models is None:  # ``make bench`` runs every benchmark without arguments
        scratch = Path(tempfile.mkdtemp(prefix="radlight-bench-sr-"))
        atexit.register(shutil.rmtree, scratch, True)
        args.models = build_untrained_densenet(scratch)

    entry = ModelRegistry(args.models).get("chexnet-densenet121-untrained")
    source = pydicom.dcmread(DX / DX_FILE)
    image = AnalysedImage(source, load_frontal_chest(source))
    job = JobIdentity(
        job_id=1,
        study_instance_uid=str(source.StudyInstanceUID),
        input_hash="bench-sr-encoding",
        created_at=WHEN,
    )
    for name, threshold in (("all 14 present", 0.0), ("card thresholds", 0.5)):
        options = ResultOptions(default_threshold=threshold)
        findings = run_model(entry, [image], options)
        report = build_results(job, algorithm_of(entry), findings, options)[-1].dataset
        present = len(findings[0].present())
        regions = sum(1 for f in findings[0].present() if f.region is not None)
        assert encode(report) == with_pydicom(report), "the bytes differ"
        before: list[float] = []
        after: list[float] = []
        for _ in range(args.runs + 1):  # the first run of each warms up
            start = time.perf_counter()
            with_pydicom(report)
            before.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            encode(report)
            after.append((time.perf_counter() - start) * 1000)
        print(
            f"{name:16s} {present:2d} present, {regions:2d} regions, "
            f"{elements(report):5d} elements: pydicom {statistics.median(before[1:]):6.2f} ms   "
            f"encode {statistics.median(after[1:]):6.2f} ms (same bytes)"
        )


if __name__ == "__main__":
    main()
