"""From a finding's heatmap to the findings every result object shows: present or absent at its
operating threshold, and the image region its heatmap points to.

The region is the bounding box of the connected hot area (heatmap ≥ ``level``) that holds the
heatmap's peak, found on a coarse grid (CAMs are 5x5 to 7x7 maps upsampled, so a stride of a few
pixels loses nothing) and mapped back to source pixels. A box, not a contour: it is what a
radiologist reads at a glance, and what every viewer draws.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

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


def heatmap_region(
    heatmap: NDArray[np.floating], level: float = DEFAULT_LEVEL
) -> HeatmapRegion | None:
    """The box around the connected area ≥ ``level`` x max that contains the peak; None if flat."""
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {heatmap.shape}")
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must be in (0, 1], got {level!r}")
    values = np.asarray(heatmap, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("heatmap has NaN or infinite values")
    peak_value = float(values.max())
    if peak_value <= 0.0 or peak_value - float(values.min()) <= 1e-6:
        return None
    rows, cols = values.shape
    stride = max(1, int(np.ceil(max(rows, cols) / GRID)))
    coarse = values[::stride, ::stride]
    hot = coarse >= level * peak_value
    peak_row, peak_col = np.unravel_index(int(np.argmax(coarse)), coarse.shape)
    component = _component(hot, (int(peak_row), int(peak_col)))
    r_idx, c_idx = np.nonzero(component)
    # Refine at full resolution inside the component's coarse box, one stride wider each way.
    top, left = max(0, (int(r_idx.min()) - 1) * stride), max(0, (int(c_idx.min()) - 1) * stride)
    bottom = min(rows, (int(r_idx.max()) + 2) * stride)
    right = min(cols, (int(c_idx.max()) + 2) * stride)
    fine_r, fine_c = np.nonzero(values[top:bottom, left:right] >= level * peak_value)
    full_peak = np.unravel_index(int(np.argmax(values)), values.shape)
    return HeatmapRegion(
        x0=float(left + fine_c.min()),
        y0=float(top + fine_r.min()),
        x1=float(left + fine_c.max() + 1),
        y1=float(top + fine_r.max() + 1),
        peak_x=float(full_peak[1]),
        peak_y=float(full_peak[0]),
    )


def _component(mask: NDArray[np.bool_], seed: tuple[int, int]) -> NDArray[np.bool_]:
    """The 8-connected component of ``mask`` containing ``seed`` (scipy's labelling: a
    breadth-first walk in Python cost about 70 ms a heatmap)."""
    labels, _count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    label = labels[seed]
    if label == 0:
        return np.zeros_like(mask)
    result: NDArray[np.bool_] = labels == label
    return result
