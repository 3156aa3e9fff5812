"""The CAM stage and the Secondary Capture builds against an earlier tree, in one process.

Loads ``models/cam.py`` and ``workers/results/{regions,overlay,sc}.py`` of ``--baseline`` (an
earlier commit unpacked with ``git archive``) under other module names beside the current ones, and
times both, alternating run by run, on the real 1024² DX with the untrained DenseNet-121: the CAM
stage (``workers.analysis._finding_results``) with all 14 findings made present, as in issue 8's
measurement; three heatmap SCs and the summary SC; and the functions under them. Each run gets
other scores (0.01 apart), as each job does, so a finding's legend lines are rendered afresh; the
earlier tree runs with highdicom's own IOD lookups, the current one with
``workers.results.iod_lookups``. It first prints how far the results differ: regions, pixels,
other attributes. Medians in milliseconds.

Run (``b8d506f`` is the commit before this work)::

    git archive b8d506f | tar -x -C /tmp/baseline
    RADLIGHT_DATA_DIR=/tmp/bench-data python -m radlight models build densenet121-untrained
    python -m bench.bench_images --baseline /tmp/baseline --models /tmp/bench-data/models --runs 30
"""

import argparse
import atexit
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from highdicom import _standard_utils, base
from highdicom.sr import content as sr_content

from models import cam
from models.preprocess import prepare_image
from models.registry import ModelRegistry
from models.runtime import load_model
from workers.analysis import AnalysedImage, ResultOptions, _finding_results, algorithm_of
from workers.imaging import load_frontal_chest
from workers.results import iod_lookups, overlay, regions, sc
from workers.results.common import FindingScore
from workers.results.regions import FindingResult, HeatmapRegion, ImageFindings

REPO = Path(__file__).resolve().parent.parent
# The real 1024² DX, as bench_ingest finds it.
DX = Path(os.environ.get("RADLIGHT_ASSETS", REPO.parent / "shared" / "assets")) / "dicom"
DX_FILE = "nih_00000001_000_google.dcm"
WHEN = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)
Timed = Callable[[int], object]


def load_baseline(
    root: Path, name: str, relative: str, renames: dict[str, str]
) -> types.ModuleType:
    """``root/relative`` as module ``name``, its imports of current modules renamed."""
    source = (root / relative).read_text()
    for old, new in renames.items():
        source = source.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = str(root / relative)
    sys.modules[name] = module
    exec(compile(source, str(root / relative), "exec"), module.__dict__)  # noqa: S102
    return module


def highdicom_as_shipped() -> None:
    for module in (_standard_utils, base, sr_content):
        module.is_attribute_in_iod = iod_lookups._ORIGINAL  # type: ignore[attr-defined]


def median_pairs(cases: dict[str, tuple[Timed, Timed]], runs: int, toggle: bool) -> None:
    for name, (old, new) in cases.items():
        t_old: list[float] = []
        t_new: list[float] = []
        for run in range(-1, runs):  # run -1 warms both up
            if toggle:
                highdicom_as_shipped()
            start = time.perf_counter()
            old(run + 1)
            t_old.append((time.perf_counter() - start) * 1000)
            if toggle:
                iod_lookups.remember_iod_lookups()
            start = time.perf_counter()
            new(run + 1)
            t_new.append((time.perf_counter() - start) * 1000)
        print(
            f"{name:28s} before {statistics.median(t_old[1:]):7.2f}   "
            f"after {statistics.median(t_new[1:]):7.2f}"
        )


def corners(region: HeatmapRegion | None) -> tuple[float, ...] | None:
    if region is None:
        return None
    return (region.x0, region.y0, region.x1, region.y1, region.peak_x, region.peak_y)


def build_untrained_densenet(scratch: Path) -> Path:
    """The untrained DenseNet-121 built under ``scratch``; returns its models folder."""
    env = dict(os.environ, RADLIGHT_DATA_DIR=str(scratch / "data"))
    subprocess.run(
        [sys.executable, "-m", "radlight", "models", "build", "densenet121-untrained"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    return scratch / "data" / "models"


BASELINE_COMMIT = "b8d506f"  # main before the CAM and SC work of issue 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="earlier tree (default: b8d506f, unpacked)")
    parser.add_argument("--models", type=Path, help="models folder (default: built here)")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="radlight-bench-images-"))
    atexit.register(shutil.rmtree, scratch, True)
    if args.baseline is None:  # ``make bench`` runs every benchmark without arguments
        args.baseline = scratch / "baseline"
        args.baseline.mkdir()
        archive = subprocess.run(
            ["git", "archive", BASELINE_COMMIT], cwd=REPO, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(args.baseline)], input=archive, check=True)
    if args.models is None:
        args.models = build_untrained_densenet(scratch)

    old_cam = load_baseline(args.baseline, "baseline_cam", "models/cam.py", {})
    old_regions = load_baseline(args.baseline, "baseline_regions", "workers/results/regions.py", {})
    old_overlay = load_baseline(args.baseline, "baseline_overlay", "workers/results/overlay.py", {})
    old_sc = load_baseline(
        args.baseline,
        "baseline_sc",
        "workers/results/sc.py",
        {"from workers.results.overlay import": "from baseline_overlay import"},
    )

    entry = ModelRegistry(args.models).get("chexnet-densenet121-untrained")
    source = pydicom.dcmread(DX / DX_FILE)
    image = AnalysedImage(source, load_frontal_chest(source))
    prepared = prepare_image(image.display, entry.card.preprocessing)
    output = load_model(entry).infer(prepared.tensor[np.newaxis])
    cams, geometry, shape = output.heatmaps[0], prepared.geometry, image.display.shape
    options = ResultOptions()
    algorithm = algorithm_of(entry)

    def scores(run: int) -> np.ndarray:
        # Every finding present, and each run other scores (so other legend text).
        shifted: np.ndarray = 0.5 + 0.1 * output.probabilities[0] + 0.01 * run
        return shifted.astype(np.float32)

    def old_findings(run: int) -> ImageFindings:
        findings = []
        for k, spec in enumerate(entry.card.labels):
            score = FindingScore.for_label(spec.name, float(scores(run)[k]))
            threshold = spec.threshold if spec.threshold is not None else options.default_threshold
            if score.probability >= threshold:
                heatmap = old_cam.cam_to_image(cams[k], geometry, shape)
                region = old_regions.heatmap_region(heatmap)
                findings.append(FindingResult(score, threshold, heatmap, region))
            else:
                findings.append(FindingResult(score, threshold))
        return ImageFindings(source=source, display=image.display, findings=findings)

    def new_findings(run: int) -> ImageFindings:
        return _finding_results(entry, image, scores(run), cams, geometry, options)

    def heatmap_sc(module: types.ModuleType, findings: ImageFindings, rank: int) -> object:
        finding = findings.present()[rank]
        return module.build_heatmap_overlay(
            source=source,
            display_image=image.display,
            heatmap=finding.heatmap,
            finding=finding.score,
            algorithm=algorithm,
            series_instance_uid="2.25.1",
            sop_instance_uid=f"2.25.1.{rank + 1}",
            series_number=1,
            instance_number=rank + 1,
            content_datetime=WHEN,
        )

    def summary_sc(module: types.ModuleType, findings: ImageFindings) -> object:
        return module.build_summary_overlay(
            image=findings,
            algorithm=algorithm,
            series_instance_uid="2.25.2",
            sop_instance_uid="2.25.2.1",
            series_number=2,
            instance_number=1,
            content_datetime=WHEN,
        )

    old_all = [old_findings(run) for run in range(args.runs + 1)]
    new_all = [new_findings(run) for run in range(args.runs + 1)]
    same = sum(
        corners(a.region) == corners(b.region)
        for a, b in zip(old_all[0].findings, new_all[0].findings, strict=True)
    )
    print(f"regions equal to the earlier tree's: {same} of {len(entry.card.labels)}")
    for rank in range(3):
        before = heatmap_sc(old_sc, old_all[0], rank)
        after = heatmap_sc(sc, new_all[0], rank)
        assert isinstance(before, pydicom.Dataset)
        assert isinstance(after, pydicom.Dataset)
        difference = np.abs(before.pixel_array.astype(int) - after.pixel_array.astype(int))
        others = [element.tag for element in before if element.tag != 0x7FE00010]
        rest = set(before.keys()) == set(after.keys()) and all(
            before[t] == after[t] for t in others
        )
        print(
            f"heatmap SC {rank + 1}: max pixel difference {difference.max()}, "
            f"{(difference.max(axis=2) > 0).mean():.1%} of pixels differ; "
            f"other attributes equal: {rest}"
        )
    before, after = summary_sc(old_sc, old_all[0]), summary_sc(sc, new_all[0])
    print(f"summary SC equal, pixels included: {before == after}")

    print(f"\nmilliseconds, medians of {args.runs} runs")
    median_pairs(
        {
            "cam stage (14 present)": (old_findings, new_findings),
            "3 heatmap SCs": (
                lambda r: [heatmap_sc(old_sc, old_all[r], k) for k in range(3)],
                lambda r: [heatmap_sc(sc, new_all[r], k) for k in range(3)],
            ),
            "summary SC": (
                lambda r: summary_sc(old_sc, old_all[r]),
                lambda r: summary_sc(sc, new_all[r]),
            ),
        },
        args.runs,
        toggle=True,
    )
    maps = [old_cam.cam_to_image(cams[k], geometry, shape) for k in range(len(cams))]

    def legend(module: types.ModuleType, run: int) -> object:
        finding = new_all[run].present()[0]
        title = f"{finding.score.display_label} {finding.score.probability:.2f}"
        return module.LegendText(title=title, detail=f"Model: {algorithm.title}")

    def entries(module: types.ModuleType, run: int) -> list[object]:
        present = new_all[run].present()
        lines: list[object] = [
            module.SummaryEntry(f"{f.score.display_label} {f.score.probability:.2f}", c.rgb)
            for f, c in zip(present[:5], module.SUMMARY_PALETTE, strict=True)
        ]
        return [*lines, module.SummaryEntry("+9 more above their threshold (see the report)")]

    detail = f"Model: {algorithm.title}"
    median_pairs(
        {
            "cam_to_image (1 map)": (
                lambda r: old_cam.cam_to_image(cams[r % 14], geometry, shape),
                lambda r: cam.cam_to_image(cams[r % 14], geometry, shape),
            ),
            "a finding's region": (
                lambda r: old_regions.heatmap_region(old_cam.cam_to_image(cams[r % 14], geometry)),
                lambda r: regions.heatmap_region(cam.ImageCam.of(cams[r % 14], geometry, shape)),
            ),
            "heatmap_region (full map)": (
                lambda r: old_regions.heatmap_region(maps[r % 14]),
                lambda r: regions.heatmap_region(maps[r % 14]),
            ),
            "blend_heatmap": (
                lambda r: old_overlay.blend_heatmap(image.display, maps[r % 14]),
                lambda r: overlay.blend_heatmap(image.display, maps[r % 14]),
            ),
            "render_legend": (
                lambda r: old_overlay.render_legend(1024, legend(old_overlay, r)),
                lambda r: overlay.render_legend(1024, legend(overlay, r)),  # type: ignore[arg-type]
            ),
            "render_summary_legend": (
                lambda r: old_overlay.render_summary_legend(1024, entries(old_overlay, r), detail),
                lambda r: overlay.render_summary_legend(1024, entries(overlay, r), detail),  # type: ignore[arg-type]
            ),
            "grey_to_rgb": (
                lambda r: old_overlay.grey_to_rgb(image.display),
                lambda r: overlay.grey_to_rgb(image.display),
            ),
        },
        args.runs,
        toggle=False,
    )


if __name__ == "__main__":
    main()
