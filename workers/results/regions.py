"""From a finding's heatmap to the findings every result object shows: present or absent at its
operating threshold, and the image region its heatmap points to.

The region is the bounding box of the connected hot area (heatmap ≥ ``level``) that holds the
heatmap's peak, found on a coarse grid (CAMs are 5x5 to 7x7 maps upsampled, so a stride of a few
pixels loses nothing) and refined to source pixels from four bands along the edges of its coarse box
(the box's edges can lie nowhere else), so a CAM need not be made whole to get its region
(``SampledHeatmap``, ``models.cam.ImageCam``). A box, not a contour: it is what a
radiologist reads at a glance, and what every viewer draws.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from scipy import ndimage

from workers.results.common import FindingScore

DEFAULT_LEVEL = 0.5
GRID = 128  # the coarse grid's longer side


@dataclass(frozen=True)
class HeatmapRegion:
    """A box in source-image pixel coordinates: columns x0..x1, rows y0..y1 (x1, y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float
    peak_x: float
    peak_y: float

    def __post_init__(self) -> None:
        if not (self.x0 < self.x1 and self.y0 < self.y1):
            raise ValueError(f"empty region {self}")

    def polygon(self) -> NDArray[np.float32]:
        """The box as a closed polygon of (column, row) points, as DICOM graphic data wants."""
        return np.array(
            [
                [self.x0, self.y0],
                [self.x1, self.y0],
                [self.x1, self.y1],
                [self.x0, self.y1],
                [self.x0, self.y0],
            ],
            dtype=np.float32,
        )

    @property
    def area_px(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)


@dataclass(frozen=True)
class FindingResult:
    """One finding on one image: its score, its operating threshold, its heatmap and region."""

    score: FindingScore
    threshold: float
    heatmap: NDArray[np.float32] | None = field(default=None, compare=False, repr=False)
    region: HeatmapRegion | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")

    @property
    def present(self) -> bool:
        return self.score.probability >= self.threshold


@dataclass(frozen=True)
class ImageFindings:
    """Everything the result builders need about one analysed source image."""

    source: Dataset
    display: NDArray[np.uint8] = field(repr=False)
    findings: Sequence[FindingResult]

    def __post_init__(self) -> None:
        rows, cols = int(self.source.Rows), int(self.source.Columns)
        if self.display.shape != (rows, cols):
            raise ValueError(
                f"display image {self.display.shape} is not the source's {rows}x{cols}"
            )
        labels = [f.score.label for f in self.findings]
        if len(set(labels)) != len(labels):
            raise ValueError("a finding is listed twice for one image")

    @property
    def sop_instance_uid(self) -> str:
        return str(self.source.SOPInstanceUID)

    def present(self) -> list[FindingResult]:
        """Findings at or above their threshold, highest score first."""
        return sorted((f for f in self.findings if f.present), key=lambda f: -f.score.probability)


EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class SampledHeatmap(Protocol):
    """A heatmap that gives any of its rows and columns without being made whole
    (``models.cam.ImageCam``): finding a region reads a coarse grid and a few bands of pixels."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def sample(self, rows: slice, cols: slice) -> NDArray[np.float32]:
        """The heatmap's values at ``rows`` x ``cols``, as float32."""
        ...

    def extrema(self) -> tuple[float, float, tuple[int, int]]:
        """``(min, max, (row, column) of the first max in row-major order)``."""
        ...


@dataclass(frozen=True, eq=False)
class _DenseHeatmap:
    """A whole heatmap array seen as a :class:`SampledHeatmap`."""

    values: NDArray[np.float32]

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.values.shape
        return rows, cols

    def sample(self, rows: slice, cols: slice) -> NDArray[np.float32]:
        return self.values[rows, cols]

    def extrema(self) -> tuple[float, float, tuple[int, int]]:
        row, col = np.unravel_index(int(np.argmax(self.values)), self.values.shape)
        return float(self.values.min()), float(self.values.max()), (int(row), int(col))


def heatmap_region(
    heatmap: NDArray[np.floating] | SampledHeatmap, level: float = DEFAULT_LEVEL
) -> HeatmapRegion | None:
    """The box around the connected area ≥ ``level`` x max that contains the peak; None if flat.

    ``heatmap`` is a 2-D array or a :class:`SampledHeatmap` (which is read only where needed).
    """
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must be in (0, 1], got {level!r}")
    source = _dense(heatmap) if isinstance(heatmap, np.ndarray) else heatmap
    low, peak_value, full_peak = source.extrema()
    if peak_value <= 0.0 or peak_value - low <= 1e-6:
        return None
    rows, cols = source.shape
    stride = max(1, int(np.ceil(max(rows, cols) / GRID)))
    coarse = source.sample(slice(0, rows, stride), slice(0, cols, stride))
    threshold = level * peak_value
    hot = coarse >= threshold
    peak_row, peak_col = np.unravel_index(int(np.argmax(coarse)), coarse.shape)
    component = _component(hot, (int(peak_row), int(peak_col)))
    r_idx, c_idx = np.nonzero(component)
    first_row, last_row = int(r_idx.min()) * stride, int(r_idx.max()) * stride
    first_col, last_col = int(c_idx.min()) * stride, int(c_idx.max()) * stride
    # Refine at full resolution inside the component's coarse box, one stride wider each way.
    window = (
        max(0, first_row - stride),
        min(rows, last_row + 2 * stride),
        max(0, first_col - stride),
        min(cols, last_col + 2 * stride),
    )
    box = _refined_box(source, window, (first_row, last_row), (first_col, last_col), threshold)
    if box is None:
        box = _window_box(source, window, threshold)
    y0, y1, x0, x1 = box
    return HeatmapRegion(
        x0=float(x0),
        y0=float(y0),
        x1=float(x1),
        y1=float(y1),
        peak_x=float(full_peak[1]),
        peak_y=float(full_peak[0]),
    )


def _dense(heatmap: NDArray[np.floating]) -> _DenseHeatmap:
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {heatmap.shape}")
    values = np.asarray(heatmap, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("heatmap has NaN or infinite values")
    return _DenseHeatmap(values)


# (top, bottom, left, right): rows top..bottom-1 and columns left..right-1.
Window = tuple[int, int, int, int]


def _window_box(source: SampledHeatmap, window: Window, threshold: float) -> Window:
    """The box (y0, y1, x0, x1) of every pixel ≥ ``threshold`` in ``window``, read whole."""
    top, bottom, left, right = window
    fine_r, fine_c = np.nonzero(source.sample(slice(top, bottom), slice(left, right)) >= threshold)
    return (
        top + int(fine_r.min()),
        top + int(fine_r.max()) + 1,
        left + int(fine_c.min()),
        left + int(fine_c.max()) + 1,
    )


def _refined_box(
    source: SampledHeatmap,
    window: Window,
    hot_rows: tuple[int, int],
    hot_cols: tuple[int, int],
    threshold: float,
) -> Window | None:
    """:func:`_window_box` read from four bands of the window instead of all of it.

    The component's coarse box has hot pixels on its first and last rows and columns (``hot_rows``,
    ``hot_cols``, in pixels), so the box's top edge lies between the window's top and the first of
    them, and so on: only those bands need reading. None if a band holds no hot pixel (a sampled
    heatmap whose coarse grid and bands disagreed in the last bit), to read the window whole.
    """
    top, bottom, left, right = window
    first_row, last_row = hot_rows
    first_col, last_col = hot_cols
    band = source.sample(slice(top, min(bottom, first_row + 1)), slice(left, right))
    above = np.flatnonzero((band >= threshold).any(axis=1))
    band = source.sample(slice(max(top, last_row), bottom), slice(left, right))
    below = np.flatnonzero((band >= threshold).any(axis=1))
    if above.size == 0 or below.size == 0:
        return None
    y0, y1 = top + int(above[0]), max(top, last_row) + int(below[-1]) + 1
    band = source.sample(slice(y0, y1), slice(left, min(right, first_col + 1)))
    before = np.flatnonzero((band >= threshold).any(axis=0))
    band = source.sample(slice(y0, y1), slice(max(left, last_col), right))
    after = np.flatnonzero((band >= threshold).any(axis=0))
    if before.size == 0 or after.size == 0:
        return None
    return y0, y1, left + int(before[0]), max(left, last_col) + int(after[-1]) + 1


def _component(mask: NDArray[np.bool_], seed: tuple[int, int]) -> NDArray[np.bool_]:
    """The 8-connected component of ``mask`` containing ``seed`` (scipy's labelling: a
    breadth-first walk in Python cost about 70 ms a heatmap)."""
    labels, _count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    label = labels[seed]
    if label == 0:
        return np.zeros_like(mask)
    result: NDArray[np.bool_] = labels == label
    return result
