"""Heatmap → region: known answers on synthetic maps."""

import numpy as np
import pytest

from models.labels import finding_code
from workers.results.common import FindingScore
from workers.results.regions import FindingResult, heatmap_region


def _blob(shape: tuple[int, int], box: tuple[int, int, int, int], value: float = 1.0) -> np.ndarray:
    x0, y0, x1, y1 = box
    heatmap = np.zeros(shape, dtype=np.float32)
    heatmap[y0:y1, x0:x1] = value
    return heatmap


def test_box_around_the_hot_area_that_holds_the_peak() -> None:
    heatmap = _blob((1024, 1024), (200, 300, 400, 600))
    heatmap += _blob((1024, 1024), (700, 100, 800, 200), value=0.8)  # a second, cooler blob
    region = heatmap_region(heatmap, level=0.5)
    assert region is not None
    assert (region.x0, region.y0, region.x1, region.y1) == (200.0, 300.0, 400.0, 600.0)
    assert 200 <= region.peak_x < 400
    assert 300 <= region.peak_y < 600
    polygon = region.polygon()
    assert polygon.shape == (5, 2)
    assert (polygon[0] == polygon[-1]).all()


def test_exact_on_grid_aligned_boxes() -> None:
    heatmap = _blob((512, 256), (64, 128, 128, 256))
    region = heatmap_region(heatmap)
    assert region is not None
    assert (region.x0, region.y0, region.x1, region.y1) == (64.0, 128.0, 128.0, 256.0)


def test_flat_or_empty_heatmaps_have_no_region() -> None:
    assert heatmap_region(np.zeros((64, 64), dtype=np.float32)) is None
    assert heatmap_region(np.full((64, 64), 0.7, dtype=np.float32)) is None


@pytest.mark.parametrize(
    "bad", [np.zeros((4,), dtype=np.float32), np.full((8, 8), np.nan, dtype=np.float32)]
)
def test_bad_heatmaps_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="heatmap"):
        heatmap_region(bad)


def test_presence_follows_the_threshold() -> None:
    score = FindingScore(label="Effusion", code=finding_code("Effusion"), probability=0.4)
    assert FindingResult(score, threshold=0.4).present
    assert not FindingResult(score, threshold=0.41).present
    with pytest.raises(ValueError, match="threshold"):
        FindingResult(score, threshold=1.5)
