"""Heatmap → region: known answers on synthetic maps, and the same regions however the heatmap is
read (bands of a dense map, a sampled CAM) as from reading the whole map."""

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage

from models.cam import ImageCam, cam_to_image
from models.labels import finding_code
from models.preprocess import CropGeometry
from workers.results.common import FindingScore
from workers.results.regions import GRID, FindingResult, HeatmapRegion, heatmap_region


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


# -- the region read from bands and from a sampled CAM: the same box as read whole -------------


def _whole_window_region(heatmap: np.ndarray, level: float = 0.5) -> tuple[float, ...] | None:
    """The region as heatmap_region found it before band reading: the whole window compared
    with the threshold, the peak from the whole map (the oracle)."""
    values = np.asarray(heatmap, dtype=np.float32)
    peak_value = float(values.max())
    if peak_value <= 0.0 or peak_value - float(values.min()) <= 1e-6:
        return None
    rows, cols = values.shape
    stride = max(1, int(np.ceil(max(rows, cols) / GRID)))
    coarse = values[::stride, ::stride]
    labels, _ = ndimage.label(coarse >= level * peak_value, structure=np.ones((3, 3), bool))
    seed = np.unravel_index(int(np.argmax(coarse)), coarse.shape)
    r_idx, c_idx = np.nonzero(labels == labels[seed])
    top, left = max(0, (r_idx.min() - 1) * stride), max(0, (c_idx.min() - 1) * stride)
    bottom, right = min(rows, (r_idx.max() + 2) * stride), min(cols, (c_idx.max() + 2) * stride)
    fine_r, fine_c = np.nonzero(values[top:bottom, left:right] >= level * peak_value)
    peak = np.unravel_index(int(np.argmax(values)), values.shape)
    return (
        float(left + fine_c.min()),
        float(top + fine_r.min()),
        float(left + fine_c.max() + 1),
        float(top + fine_r.max() + 1),
        float(peak[1]),
        float(peak[0]),
    )


def _as_tuple(region: HeatmapRegion | None) -> tuple[float, ...] | None:
    if region is None:
        return None
    return (region.x0, region.y0, region.x1, region.y1, region.peak_x, region.peak_y)


def _blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A few Gaussian blobs of different heights: several hot components, some in one window."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    heatmap = np.zeros(shape, dtype=np.float32)
    for _ in range(4):
        r, c = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        width = rng.uniform(0.03, 0.2) * max(shape)
        heatmap += rng.uniform(0.3, 1.0) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / width**2)
    return heatmap


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("shape", [(1024, 1024), (700, 515), (96, 130)])
def test_band_reading_finds_the_whole_windows_box(shape: tuple[int, int], seed: int) -> None:
    heatmap = _blobs(shape, seed)
    for level in (0.3, 0.5, 0.8):
        assert _as_tuple(heatmap_region(heatmap, level)) == _whole_window_region(heatmap, level)


@pytest.mark.parametrize(
    "geometry",
    [
        CropGeometry((1024, 1024), (224, 224), (0, 0), 224),
        CropGeometry((1024, 800), (286, 224), (31, 0), 224),
        CropGeometry((2048, 2500), (224, 273), (0, 24), 224),
    ],
    ids=lambda g: f"{g.original_shape}",
)
def test_a_cams_region_without_its_full_map_is_the_full_maps(geometry: CropGeometry) -> None:
    rng = np.random.default_rng(geometry.original_shape[1])
    for _ in range(25):
        cam = rng.standard_normal((7, 7)).astype(np.float32)
        image_cam = ImageCam.of(cam, geometry)
        expected = _whole_window_region(cam_to_image(cam, geometry))
        assert _as_tuple(heatmap_region(image_cam)) == expected
        assert heatmap_region(image_cam) == heatmap_region(image_cam.full())


@dataclass(frozen=True)
class _Disagreeing:
    """A sampled heatmap whose coarse grid says one thing and whose pixels another: the band
    reading must notice and read the window whole."""

    coarse: np.ndarray
    fine: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.fine.shape
        return rows, cols

    def sample(self, rows: slice, cols: slice) -> np.ndarray:
        strided = (rows.step or 1) > 1 or (cols.step or 1) > 1
        return (self.coarse if strided else self.fine)[rows, cols]

    def extrema(self) -> tuple[float, float, tuple[int, int]]:
        return 0.0, 1.0, (0, 0)


@pytest.mark.parametrize(
    "fine_box",
    [(100, 100, 150, 150), (100, 62, 150, 194)],  # away from every band; across the row bands
    ids=["no-row-band", "no-column-band"],
)
def test_a_band_without_hot_pixels_falls_back_to_the_whole_window(
    fine_box: tuple[int, int, int, int],
) -> None:
    coarse = _blob((256, 256), (64, 64, 192, 192))  # the window: rows and columns 62..193
    region = heatmap_region(_Disagreeing(coarse, _blob((256, 256), fine_box)))
    assert region is not None
    assert (region.x0, region.y0, region.x1, region.y1) == tuple(float(v) for v in fine_box)
