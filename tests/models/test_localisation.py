"""Localisation metrics on the 12 NIH expert boxes, with synthetic heatmaps whose answers are known."""

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from models.localisation import (
    Box,
    LocalisationCase,
    boxes_mask,
    dice,
    evaluate_localisation,
    iou,
    peak,
    pointing_hit,
    read_boxes,
    split_of,
    threshold_heatmap,
    tune_and_report,
    tune_threshold,
)

SIZE = 1024
SHAPE = (SIZE, SIZE)
Boxes = dict[tuple[str, str], tuple[Box, ...]]


@pytest.fixture(scope="module")
def expert_boxes(assets_dir: Path) -> Boxes:
    return read_boxes(assets_dir / "nih_cxr14" / "bboxes.csv")


def _grid() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Pixel-centre coordinates (row, col) of the 1024 x 1024 image."""
    centres = np.arange(SIZE, dtype=np.float64) + 0.5
    rows: npt.NDArray[np.float64] = centres[:, np.newaxis]
    cols: npt.NDArray[np.float64] = centres[np.newaxis, :]
    return rows, cols


def gaussian(row: float, col: float, sigma: float = 20.0) -> npt.NDArray[np.float64]:
    rows, cols = _grid()
    result: npt.NDArray[np.float64] = np.exp(
        -((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma**2)
    )
    return result


def pyramid(box: Box, level: float) -> npt.NDArray[np.float64]:
    """A flat-topped pyramid on the box whose edge sits at ``level`` exactly.

    With Chebyshev distance ``d`` normalised by the half-sides (``d = 1`` on the box's edge), the
    value is ``clip(level + (1 - d), 0, 1)``: 1 on a plateau, 0 far away (so min-max normalisation
    changes nothing). Thresholding at ``level`` gives the box, a lower threshold a larger
    rectangle, a higher one a smaller: ``level`` is the best IoU and Dice.
    """
    rows, cols = _grid()
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    d = np.maximum(np.abs(cols - cx) / (box.w / 2), np.abs(rows - cy) / (box.h / 2))
    result: npt.NDArray[np.float64] = np.clip(level + (1.0 - d), 0.0, 1.0)
    return result


def test_the_twelve_expert_boxes_are_read(assets_dir: Path, expert_boxes: Boxes) -> None:
    assert sum(len(boxes) for boxes in expert_boxes.values()) == 12
    assert len({image for image, _ in expert_boxes}) == 12
    assert ("00026911_000.png", "Infiltration") in expert_boxes  # NIH's "Infiltrate"
    (box,) = expert_boxes[("00002578_000.png", "Nodule")]
    assert box == Box(796.444, 327.247, 78.019, 59.598)
    # The same boxes, read from NIH's full table (its own header), to 3 decimals.
    full = read_boxes(assets_dir / "labels_full" / "BBox_List_2017.csv.gz")
    assert sum(len(boxes) for boxes in full.values()) == 984
    for key, (ours,) in expert_boxes.items():
        (theirs,) = full[key]
        assert np.allclose(
            [ours.x, ours.y, ours.w, ours.h], [theirs.x, theirs.y, theirs.w, theirs.h], atol=5e-4
        )


def test_pointing_game_gaussian_inside_every_box_hits_12_of_12(expert_boxes: Boxes) -> None:
    cases = [
        LocalisationCase(image, finding, gaussian(b.y + b.h / 2, b.x + b.w / 2), boxes)
        for (image, finding), boxes in expert_boxes.items()
        for b in boxes[:1]
    ]
    summary = evaluate_localisation(cases, threshold=0.5)
    assert (summary.hits, summary.n_cases, summary.hit_rate) == (12, 12, 1.0)


def test_pointing_game_peak_just_outside_every_box_hits_0_of_12(expert_boxes: Boxes) -> None:
    hits, near_hits = 0, 0
    for boxes in expert_boxes.values():
        (box,) = boxes
        # Peak 8 pixels left of the box, at its vertical centre (every box has x > 100).
        heatmap = gaussian(box.y + box.h / 2, box.x - 8.0, sigma=4.0)
        row, col = peak(heatmap)
        assert box.distance(row + 0.5, col + 0.5) == pytest.approx(8.0, abs=1.0)
        hits += pointing_hit(heatmap, boxes)
        near_hits += pointing_hit(heatmap, boxes, tolerance=10.0)
    assert hits == 0
    assert near_hits == 12  # within a 10-pixel tolerance they all count


def test_heatmap_equal_to_the_box_mask_scores_one_at_any_threshold(expert_boxes: Boxes) -> None:
    for boxes in expert_boxes.values():
        truth = boxes_mask(boxes, SHAPE)
        heatmap = truth.astype(np.float64) * 3.0 - 1.0  # any scale: min-max normalised
        for threshold in (0.01, 0.25, 0.5, 0.75, 0.999):
            predicted = threshold_heatmap(heatmap, threshold)
            assert iou(predicted, truth) == 1.0
            assert dice(predicted, truth) == 1.0


def _pixels(start: float, length: float) -> int:
    """Pixel centres i + 0.5 in [start, start + length): ceil(start + length - 0.5) - ceil(start - 0.5)."""
    return math.ceil(start + length - 0.5) - math.ceil(start - 0.5)


def test_half_overlapping_rectangle_gives_the_hand_computed_iou_and_dice(
    expert_boxes: Boxes,
) -> None:
    for (image, _), boxes in expert_boxes.items():
        (box,) = boxes
        truth = box.mask(SHAPE)
        nx, ny = _pixels(box.x, box.w), _pixels(box.y, box.h)
        assert int(truth.sum()) == nx * ny, image
        # Shift the box's own mask by half its size along an axis where it stays in the image.
        candidates = [
            (axis, n, n // 2, sign)
            for axis, n, low, high in ((1, nx, box.x, box.x + box.w), (0, ny, box.y, box.y + box.h))
            for sign in (1, -1)
            if (high + n // 2 <= SIZE if sign == 1 else low - n // 2 >= 0)
        ]
        assert candidates, image
        axis, n, k, sign = candidates[0]
        shifted = np.roll(truth, sign * k, axis=axis)
        overlap, union = (n - k) * (truth.sum() // n), (n + k) * (truth.sum() // n)
        assert iou(threshold_heatmap(shifted.astype(np.float64), 0.5), truth) == pytest.approx(
            overlap / union
        )
        assert dice(shifted, truth) == pytest.approx((n - k) / n)
    # And one with round numbers: a 100 x 60 box, shifted 50 pixels: IoU 1/3, Dice 1/2.
    box = Box(200.0, 300.0, 100.0, 60.0)
    other = Box(250.0, 300.0, 100.0, 60.0)
    assert iou(other.mask(SHAPE), box.mask(SHAPE)) == pytest.approx(1 / 3)
    assert dice(other.mask(SHAPE), box.mask(SHAPE)) == pytest.approx(1 / 2)


def test_boxes_scale_onto_a_coarser_heatmap() -> None:
    box = Box(256.0, 512.0, 128.0, 64.0)  # in 1024 space: 32 x 16 cells on a 256 grid
    heatmap = np.zeros((256, 256))
    heatmap[128:144, 64:96] = 1.0
    assert pointing_hit(heatmap, [box], image_shape=SHAPE)
    case = LocalisationCase("x_000.png", "Mass", heatmap, (box,), image_shape=SHAPE)
    summary = evaluate_localisation([case], threshold=0.5)
    assert (summary.mean_iou, summary.mean_dice, summary.hits) == (1.0, 1.0, 1)


def test_empty_and_constant_maps() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    assert iou(empty, empty) == 1.0
    assert dice(empty, empty) == 1.0
    assert not threshold_heatmap(np.full((4, 4), 7.0), 0.1).any()  # constant: no localisation
    with pytest.raises(ValueError, match="NaN"):
        threshold_heatmap(np.full((4, 4), np.nan), 0.5)


def test_split_is_deterministic_by_patient() -> None:
    assert split_of("00013911_000.png") == split_of("00013911_007.png")
    assert split_of("00013911_000.png") == split_of("00013911_000.png")
    sides = [split_of(f"{patient:08d}_000.png") for patient in range(2000)]
    assert 0.45 < sides.count("tune") / len(sides) < 0.55
    assert split_of("00000001_000.png", salt="a") in ("tune", "report")


def test_tuned_threshold_is_the_known_best(expert_boxes: Boxes) -> None:
    """Pyramids whose box edge is at 0.3: tuning finds 0.3 and the report split scores ~1."""
    cases = [
        LocalisationCase(image, finding, pyramid(boxes[0], 0.3), boxes)
        for (image, finding), boxes in expert_boxes.items()
    ]
    for case in cases:  # min 0 and max 1, so normalisation does not move the levels
        assert (case.heatmap.min(), case.heatmap.max()) == (0.0, 1.0)
    tuning = tune_threshold(cases)
    assert tuning.threshold == 0.3
    table = dict(tuning.table)
    assert table[0.3] > 0.95 > max(table[0.25], table[0.35])
    assert tune_threshold(cases, metric="dice").threshold == 0.3

    result = tune_and_report(cases)
    assert result.tuning.threshold == 0.3
    report_images = {c.image_index for c in result.report.cases}
    assert report_images
    assert result.tune_cases
    assert not report_images & set(result.tune_cases)
    assert len(report_images) + len(result.tune_cases) == 12
    assert result.report.mean_iou > 0.95
    assert result.report.hits == len(report_images)


def test_threshold_comes_from_the_tuning_split_only(expert_boxes: Boxes) -> None:
    """Tuning maps peak their IoU at 0.3, report maps at 0.7: the report is scored at 0.3."""
    cases = []
    for (image, finding), boxes in expert_boxes.items():
        level = 0.3 if split_of(image) == "tune" else 0.7
        cases.append(LocalisationCase(image, finding, pyramid(boxes[0], level), boxes))
        assert (cases[-1].heatmap.min(), cases[-1].heatmap.max()) == (0.0, 1.0)
    result = tune_and_report(cases)
    assert result.tuning.threshold == 0.3
    report = [c for c in cases if split_of(c.image_index) == "report"]
    at_03 = evaluate_localisation(report, 0.3)
    assert result.report.mean_iou == at_03.mean_iou
    assert result.report.mean_dice == at_03.mean_dice
    # At 0.3 a 0.7-pyramid gives the box grown 1.4 times each way: IoU about 1 / 1.4^2.
    assert result.report.mean_iou == pytest.approx(1 / 1.4**2, abs=0.02)
    assert evaluate_localisation(report, 0.7).mean_iou > 0.95
