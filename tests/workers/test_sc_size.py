"""The Secondary Capture overlays' size cap (``RADLIGHT_OVERLAY_MAX_SIDE``): a source larger than
the cap is shown reduced, its regions outlined where they fall on the reduced image, and the
derivation says so; a source within the cap gives the same bytes as with no cap. Sources are the
real NIH chest X-ray resampled to 2048 x 1536 (12-bit DX, as a CR of that size would come).
"""

import gc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import workers.results.overlay as overlay_module
from db.models import JobState, ResultKind
from models.export import BuiltModel
from tests.dicom_io import to_bytes
from tests.workers.conftest import copy_with_new_uids, receive
from tests.workers.test_pipeline import make_job, results_of, sop_uid
from tests.workers.test_sc_summary import (
    ALGORITHM,
    WHEN,
    border_and_interior,
    dciodvfy_errors,
    read_strict,
    synthetic_findings,
)
from workers.analysis import AnalysedImage, ResultOptions, run_model
from workers.context import WorkerContext
from workers.imaging import load_frontal_chest
from workers.pipeline import run_job
from workers.results.overlay import (
    SUMMARY_PALETTE,
    compose_overlay,
    reduce_grey,
    reduce_heatmap,
    reduction_for,
)
from workers.results.regions import HeatmapRegion, ImageFindings
from workers.results.sc import (
    build_heatmap_overlay,
    build_sentence_overlay,
    build_summary_overlay,
    legend_text,
)

ROWS, COLUMNS = 2048, 1536


@pytest.fixture(scope="module")
def large_source(real_dicom_files: list[Path]) -> pydicom.Dataset:
    """The real NIH image as a 2048 x 1536 8-bit DX (the display pipeline's input size)."""
    ds = pydicom.dcmread(real_dicom_files[0])
    pixels = Image.fromarray(ds.pixel_array).resize((COLUMNS, ROWS), Image.Resampling.BILINEAR)
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.PixelData = np.asarray(pixels, dtype=np.uint8).tobytes()
    return ds


def overlay(image: ImageFindings, max_side: int | None) -> pydicom.Dataset:
    top = image.present()[0]
    assert top.heatmap is not None
    built = build_heatmap_overlay(
        source=image.source,
        display_image=image.display,
        heatmap=top.heatmap,
        finding=top.score,
        algorithm=ALGORITHM,
        series_instance_uid="1.2.826.0.1.3680043.8.498.1",
        sop_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_number=901,
        instance_number=1,
        content_datetime=WHEN,
        max_side=max_side,
    )
    return read_strict(to_bytes(built))


def summary(image: ImageFindings, max_side: int | None) -> pydicom.Dataset:
    built = build_summary_overlay(
        image=image,
        algorithm=ALGORITHM,
        series_instance_uid="1.2.826.0.1.3680043.8.498.3",
        sop_instance_uid="1.2.826.0.1.3680043.8.498.4",
        series_number=903,
        instance_number=1,
        content_datetime=WHEN,
        max_side=max_side,
    )
    return read_strict(to_bytes(built))


def scaled(region: HeatmapRegion, factor: float) -> HeatmapRegion:
    return HeatmapRegion(
        region.x0 * factor,
        region.y0 * factor,
        region.x1 * factor,
        region.y1 * factor,
        region.peak_x * factor,
        region.peak_y * factor,
    )


def test_a_large_source_is_shown_reduced_with_its_heatmap_blended_at_that_size(
    large_source: pydicom.Dataset,
) -> None:
    image = synthetic_findings(large_source)
    sc = overlay(image, 1024)
    reduction = reduction_for((ROWS, COLUMNS), 1024)
    assert reduction.shape == (1024, 768)
    assert int(sc.Columns) == 768
    picture = sc.pixel_array[:1024]
    top = image.present()[0]
    assert top.heatmap is not None
    expected = compose_overlay(
        reduce_grey(image.display, reduction),
        reduce_heatmap(top.heatmap, reduction),
        legend_text(top.score, ALGORITHM),
    )
    np.testing.assert_array_equal(sc.pixel_array, expected)
    # The heatmap's peak is where the source's peak falls on the reduced image.
    assert top.region is not None
    peak_row, peak_col = round(top.region.peak_y / 2), round(top.region.peak_x / 2)
    grey = reduce_grey(image.display, reduction)[peak_row, peak_col]
    assert np.abs(picture[peak_row, peak_col].astype(int) - int(grey)).max() > 40
    assert "reduced from 1536x2048 to 768x1024 pixels" in sc.DerivationDescription
    assert "appended below the reduced image" in sc.DerivationDescription


def test_the_summary_outlines_regions_where_they_fall_on_the_reduced_image(
    large_source: pydicom.Dataset,
) -> None:
    image = synthetic_findings(large_source)
    sc = summary(image, 1024)
    shape = (1024, 768)
    picture = sc.pixel_array[: shape[0]]
    outlined = [f for f in image.present() if f.region is not None]
    for finding, colour in zip(outlined, SUMMARY_PALETTE, strict=False):
        assert finding.region is not None
        border, _ = border_and_interior(scaled(finding.region, 0.5), shape)
        assert border.sum() > 500
        assert np.all(picture[border] == colour.rgb), finding.score.label
    assert "reduced from 1536x2048 to 768x1024 pixels" in sc.DerivationDescription


def test_a_source_within_the_cap_gives_the_same_bytes_as_no_cap(
    real_dicom_files: list[Path],
) -> None:
    image = synthetic_findings(pydicom.dcmread(real_dicom_files[0]))  # 1024 x 1024
    assert to_bytes(overlay(image, 1024)) == to_bytes(overlay(image, None))
    assert to_bytes(summary(image, 4096)) == to_bytes(summary(image, None))
    assert "reduced" not in overlay(image, 1024).DerivationDescription


def test_a_report_sentence_overlay_is_reduced_alike(large_source: pydicom.Dataset) -> None:
    image = synthetic_findings(large_source)
    top = image.present()[0]
    assert top.heatmap is not None
    built = build_sentence_overlay(
        source=image.source,
        display_image=image.display,
        heatmap=top.heatmap,
        sentence="The cardiac silhouette is enlarged.",
        sentence_number=1,
        algorithm=ALGORITHM,
        series_instance_uid="1.2.826.0.1.3680043.8.498.5",
        sop_instance_uid="1.2.826.0.1.3680043.8.498.6",
        series_number=9909,
        instance_number=1,
        content_datetime=WHEN,
        max_side=1024,
    )
    sc = read_strict(to_bytes(built))
    assert int(sc.Columns) == 768
    assert "reduced from 1536x2048 to 768x1024 pixels" in sc.DerivationDescription


@pytest.mark.parametrize("bad", [0, -5, 1.5, "1024", True])
def test_a_bad_cap_is_refused(large_source: pydicom.Dataset, bad: object) -> None:
    image = synthetic_findings(large_source)
    with pytest.raises((TypeError, ValueError), match="max_side"):
        summary(image, bad)  # type: ignore[arg-type]


def test_the_reduced_overlay_passes_dciodvfy(large_source: pydicom.Dataset, tmp_path: Path) -> None:
    image = synthetic_findings(large_source)
    for name, sc in (("overlay", overlay(image, 1024)), ("summary", summary(image, 1024))):
        errors, output = dciodvfy_errors(to_bytes(sc), tmp_path / f"{name}.dcm")
        assert errors == [], output


def test_the_worker_caps_a_large_studys_overlays_by_its_setting(
    ctx: WorkerContext, tiny_model: BuiltModel, large_source: pydicom.Dataset
) -> None:
    assert ctx.settings.overlay_max_side == 1024  # the default
    source = copy_with_new_uids(large_source)
    outcome = receive(ctx, source)
    job_id = make_job(ctx, outcome.study_id, [sop_uid(source)], model_name=tiny_model.card.name)
    assert run_job(job_id, ctx) is JobState.SUCCEEDED
    overlays = [
        r for r in results_of(ctx) if r.kind in (ResultKind.HEATMAP_SC, ResultKind.SUMMARY_SC)
    ]
    assert overlays
    for result in overlays:
        sc = pydicom.dcmread(ctx.store.absolute(result.relative_path))
        assert int(sc.Columns) == 768, result.kind
        assert "reduced from 1536x2048" in sc.DerivationDescription


def test_a_heatmap_made_at_the_overlays_size_is_blended_as_it_is(
    large_source: pydicom.Dataset,
) -> None:
    """The worker makes a drawn heatmap at the overlay's size; the SC uses it without resampling,
    and gives the pixels that the full-size map reduced would have."""
    image = synthetic_findings(large_source)
    top = image.present()[0]
    assert top.heatmap is not None
    reduction = reduction_for((ROWS, COLUMNS), 1024)
    small = reduce_heatmap(top.heatmap, reduction)
    assert small.shape == (1024, 768)
    at_size = ImageFindings(
        source=image.source,
        display=image.display,
        findings=[replace(f, heatmap=small) if f is top else f for f in image.findings],
    )
    assert overlay(at_size, 1024).PixelData == overlay(image, 1024).PixelData

    odd = ImageFindings(
        source=image.source,
        display=image.display,
        findings=[replace(f, heatmap=small[:500]) if f is top else f for f in image.findings],
    )
    with pytest.raises(ValueError, match="heatmap shape"):
        overlay(odd, 1024)
    with pytest.raises(ValueError, match="heatmap shape"):
        overlay(at_size, None)  # no cap: the heatmap must be the source's size


@pytest.mark.parametrize("segmentation", [False, True])
def test_drawn_heatmaps_are_made_at_the_overlays_size_unless_a_seg_needs_them_whole(
    ctx: WorkerContext, tiny_model: BuiltModel, large_source: pydicom.Dataset, segmentation: bool
) -> None:
    entry = ctx.registry.get(tiny_model.card.name)
    analysed = AnalysedImage(large_source, load_frontal_chest(large_source))
    options = ResultOptions(overlay_max_side=1024, segmentation=segmentation, default_threshold=0.0)
    (findings,) = run_model(entry, [analysed], options)
    drawn = [f for f in findings.findings if f.heatmap is not None]
    assert drawn
    expected = (ROWS, COLUMNS) if segmentation else (1024, 768)
    assert {f.heatmap.shape for f in drawn if f.heatmap is not None} == {expected}
    if segmentation:
        return
    # The same CAM as the full-size map, sampled at the overlay's pixels instead of averaged.
    whole = run_model(entry, [analysed], replace(options, overlay_max_side=None))[0]
    for made, full in zip(drawn, [f for f in whole.findings if f.heatmap is not None], strict=True):
        assert made.heatmap is not None
        assert full.heatmap is not None
        reduced = reduce_heatmap(full.heatmap, reduction_for((ROWS, COLUMNS), 1024))
        assert float(np.abs(made.heatmap - reduced).max()) < 0.02
        assert made.region == full.region  # regions come from the CAM itself, not the map


def test_an_images_reduced_grey_is_made_once_and_goes_with_the_image() -> None:
    reduction = reduction_for((ROWS, COLUMNS), 1024)
    image = np.random.default_rng(0).integers(0, 256, (ROWS, COLUMNS), dtype=np.uint8)
    writable = reduce_grey(image, reduction)
    assert reduce_grey(image, reduction) is not writable  # may change: not cached
    image.flags.writeable = False
    first = reduce_grey(image, reduction)
    assert reduce_grey(image, reduction) is first
    assert not first.flags.writeable  # shared between the image's overlays
    np.testing.assert_array_equal(first, writable)
    key = (id(image), reduction.shape)
    assert key in overlay_module._REDUCED_GREYS
    del image
    gc.collect()
    assert key not in overlay_module._REDUCED_GREYS
