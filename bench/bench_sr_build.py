"""Building the findings SR: highdicom's templates item by item against the fast content.

On the real 1024² DX, with synthetic scores for the 14 findings (as tests/workers/test_sr.py makes
them), the report is built both ways, alternating run by run in this one process:
``build_findings_report_with_templates`` (what the worker did) and ``build_findings_report``
(copies of items made once by the templates). Two cases: 3 findings present, each with a
region; all 14 present, each with a region. It first checks the two encode to the same bytes.
Medians in milliseconds, and their ratio.

Run::

    python -m bench.bench_sr_build --runs 50
"""

import argparse
import datetime
import hashlib
import statistics
import time
from collections.abc import Callable

import numpy as np
import pydicom
from highdicom.sr import ComprehensiveSR

from bench.bench_images import DX, DX_FILE
from models.labels import CHEST_XRAY14_LABELS
from radlight.uids import deterministic_uid
from workers.results.common import AlgorithmInfo, FindingScore
from workers.results.encoding import encode
from workers.results.regions import FindingResult, HeatmapRegion, ImageFindings
from workers.results.sr import build_findings_report, build_findings_report_with_templates

WHEN = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)
ALGORITHM = AlgorithmInfo(
    name="CheXNet-DenseNet121", version="1.0.0", sha256=hashlib.sha256(b"bench").hexdigest()
)


def image_findings(source: pydicom.Dataset, present: int) -> ImageFindings:
    """14 findings, the last ``present`` of them above the 0.5 threshold, each with a region."""
    rows, columns = int(source.Rows), int(source.Columns)
    findings = []
    for index, label in enumerate(CHEST_XRAY14_LABELS):
        is_present = index >= 14 - present
        score = 0.51 + index / 100 if is_present else 0.01 + index / 100
        x0, y0 = columns * 0.05 * (index % 10), rows * 0.1
        region = (
            HeatmapRegion(x0, y0, x0 + columns / 5, y0 + rows / 3, x0 + 1, y0 + 1)
            if is_present
            else None
        )
        findings.append(
            FindingResult(score=FindingScore.for_label(label, score), threshold=0.5, region=region)
        )
    return ImageFindings(
        source=source, display=np.zeros((rows, columns), dtype=np.uint8), findings=findings
    )


def build(builder: Callable[..., ComprehensiveSR], images: list[ImageFindings]) -> ComprehensiveSR:
    return builder(
        images=images,
        algorithm=ALGORITHM,
        series_instance_uid=deterministic_uid("bench-sr-build", "series"),
        sop_instance_uid=deterministic_uid("bench-sr-build", "report"),
        series_number=9902,
        instance_number=1,
        content_datetime=WHEN,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    source = pydicom.dcmread(DX / DX_FILE)
    for present in (3, 14):
        images = [image_findings(source, present)]
        templates_bytes = encode(build(build_findings_report_with_templates, images))
        assert encode(build(build_findings_report, images)) == templates_bytes, "the bytes differ"
        before: list[float] = []
        after: list[float] = []
        for _ in range(args.runs + 1):  # the first run of each warms up
            start = time.perf_counter()
            build(build_findings_report_with_templates, images)
            before.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            build(build_findings_report, images)
            after.append((time.perf_counter() - start) * 1000)
        templates, fast = statistics.median(before[1:]), statistics.median(after[1:])
        print(
            f"14 findings, {present:2d} present with regions: templates {templates:6.2f} ms   "
            f"fast {fast:6.2f} ms   x{templates / fast:4.1f} (same bytes)"
        )


if __name__ == "__main__":
    main()
