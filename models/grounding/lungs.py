"""Lung fields of a frontal chest X-ray by classical image processing, and the zones of them.

No trained segmentation network can be shipped here, so the lungs are found the way they look:
the two large dark (air-filled) regions inside the bright body, one on each side of the spine,
below the neck and above the diaphragm. On a 256-pixel working grid:

1. stretch contrast (1st-99th percentile) and smooth;
2. threshold the dark pixels at Otsu's level of the central part of the image;
4. keep only what lies in an ellipse where a lung lies on a PA view (this cuts the bridges of dark
   soft tissue and outside air that touch the lungs), open with a small disk;
5. on each side keep the largest region; close with a disk and fill holes;

then resize back to the image grid (nearest). Where a side gives no plausible region, a fixed
template shape stands in for it and :attr:`LungFields.fallback` says so. The Dice measured against
the Montgomery masks is in docs/GROUNDING.md (``radlight models evaluate-lungs``).

Sides are the patient's: on a PA view the patient's right lung is on the image's left.
Zones (:meth:`LungFields.zone`) are derived from each lung's own extent: upper/middle/lower thirds
of its height, apex (top 20%), base (bottom 20%), costophrenic angle (bottom 25%, lateral half),
hilum and perihilar (a band at 35-60% / 25-70% of the height by the medial border), and the
heart, mediastinum and retrocardiac regions between and behind the lungs.
"""

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

from models.grounding.lexicon import Laterality

BoolArray = npt.NDArray[np.bool_]
WORK_SIZE = 256
# Half-width and half-height (fractions of the image) of the ellipse a lung is searched in, and of
# the stand-in shape when none is found; chosen on every 4th Montgomery image (docs/GROUNDING.md).
ENVELOPE = (0.20, 0.42)
TEMPLATE = (0.17, 0.33)
MIN_LUNG_FRACTION = 0.02
MIN_CONTRAST = 0.02
ZONE_NAMES: tuple[str, ...] = (
    "lung",
    "upper zone",
    "middle zone",
    "lower zone",
    "apex",
    "base",
    "costophrenic angle",
    "hilum",
    "perihilar",
    "retrocardiac",
    "heart",
    "mediastinum",
)


@dataclass(frozen=True)
class LungFields:
    """Masks of the patient's right and left lung on the image grid ``(H, W)``."""

    right: BoolArray
    left: BoolArray
    fallback: tuple[Laterality, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("right", "left"):
            mask = getattr(self, name)
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2:
                raise ValueError(f"{name} must be a 2-D boolean array")
        if self.right.shape != self.left.shape:
            raise ValueError(f"mask shapes differ: {self.right.shape} vs {self.left.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.right.shape[0]), int(self.right.shape[1]))

    def lungs(self, side: Laterality | None) -> BoolArray:
        if side == "right":
            return self.right
        if side == "left":
            return self.left
        result: BoolArray = self.right | self.left
        return result

    def zone(self, name: str, side: Laterality | None) -> BoolArray:
        """The mask of a named zone (one of :data:`ZONE_NAMES`) on one side or both."""
        if name not in ZONE_NAMES:
            raise ValueError(f"unknown zone {name!r}; known: {', '.join(ZONE_NAMES)}")
        if name in ("heart", "mediastinum", "retrocardiac"):
            return self._central(name)
        sides: tuple[Laterality, ...] = (
            (side,) if side == "right" or side == "left" else ("right", "left")
        )
        result = np.zeros(self.shape, dtype=np.bool_)
        for one in sides:
            result |= self._lung_zone(name, one)
        return result

    def _lung_zone(self, name: str, side: Laterality) -> BoolArray:
        lung = self.lungs(side)
        if name == "lung" or not lung.any():
            return lung.copy()
        rows = np.flatnonzero(lung.any(axis=1))
        top, bottom = float(rows[0]), float(rows[-1] + 1)
        cols = np.flatnonzero(lung.any(axis=0))
        inner, outer = _medial_lateral(side, float(cols[0]), float(cols[-1] + 1))
        height, width = bottom - top, abs(outer - inner)
        row_pos = (np.arange(self.shape[0]) + 0.5 - top) / height  # 0 at the apex, 1 at the base
        col_pos = np.abs(np.arange(self.shape[1]) + 0.5 - inner) / width  # 0 medial, 1 lateral
        if side == "right":  # image left is lateral for the right lung
            col_pos = np.where(np.arange(self.shape[1]) + 0.5 <= inner, col_pos, -col_pos)
        else:
            col_pos = np.where(np.arange(self.shape[1]) + 0.5 >= inner, col_pos, -col_pos)
        r = row_pos[:, np.newaxis]
        c = col_pos[np.newaxis, :]
        bands: dict[str, npt.NDArray[np.bool_]] = {
            "upper zone": (r < 1 / 3) & lung,
            "middle zone": (r >= 1 / 3) & (r < 2 / 3) & lung,
            "lower zone": (r >= 2 / 3) & lung,
            "apex": (r < 0.2) & lung,
            "base": (r >= 0.8) & lung,
            "costophrenic angle": (r >= 0.75) & (c >= 0.5) & lung,
            "hilum": (r >= 0.35) & (r < 0.6) & (c >= -0.15) & (c < 0.35),
            "perihilar": (r >= 0.25) & (r < 0.7) & (c >= -0.1) & (c < 0.5),
        }
        result: BoolArray = np.broadcast_to(bands[name], self.shape).copy()
        return result

    def _central(self, name: str) -> BoolArray:
        """Heart (lower part between the lungs, bulging left), mediastinum (upper part), and the
        retrocardiac region (heart behind the lower left lung)."""
        cols = self.shape[1]
        both = self.right | self.left
        result = np.zeros(self.shape, dtype=np.bool_)
        if not self.right.any() or not self.left.any():
            return result
        lung_rows = np.flatnonzero(both.any(axis=1))
        top, bottom = int(lung_rows[0]), int(lung_rows[-1]) + 1
        r_cols = np.flatnonzero(self.right.any(axis=0))
        l_cols = np.flatnonzero(self.left.any(axis=0))
        right_is_image_left = r_cols.mean() < l_cols.mean()
        split_row = top + int(0.45 * (bottom - top))
        for row in range(top, bottom):
            r_line = np.flatnonzero(self.right[row])
            l_line = np.flatnonzero(self.left[row])
            if right_is_image_left:
                a = int(r_line.max()) + 1 if r_line.size else int(r_cols.max()) + 1
                b = int(l_line.min()) if l_line.size else int(l_cols.min())
            else:
                a = int(l_line.max()) + 1 if l_line.size else int(l_cols.max()) + 1
                b = int(r_line.min()) if r_line.size else int(r_cols.min())
            if b <= a:
                continue
            if (row < split_row) == (name == "mediastinum"):
                result[row, a:b] = True
        if name == "retrocardiac":
            heart = self._central("heart")
            # The heart's left border overlaps the left lung: widen it into the lung's lower half.
            grow = max(1, cols // 25)
            wide = ndimage.binary_dilation(heart, iterations=grow)
            lower_left = self.zone("lower zone", "left") | self.zone("middle zone", "left")
            result = (wide & lower_left) | heart
        return result


def _medial_lateral(side: Laterality, first_col: float, end_col: float) -> tuple[float, float]:
    """(medial, lateral) column of a lung on a PA view (patient's right is on the image left)."""
    return (end_col, first_col) if side == "right" else (first_col, end_col)


def segment_lung_fields(image: npt.NDArray[np.floating]) -> LungFields:
    """Right and left lung masks of a display-windowed image (2-D, values in [0, 1])."""
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 8:
        raise ValueError(f"expected a 2-D image of at least 8x8 pixels, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating) and image.dtype != np.uint8:
        raise ValueError(f"expected floating-point or uint8 pixels, got {image.dtype}")
    values = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    if not np.isfinite(values).all():
        raise ValueError("image holds NaN or infinity")
    work = np.asarray(
        Image.fromarray(values).resize((WORK_SIZE, WORK_SIZE), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    right, left, fallback = _segment_work(work)
    shape = (int(image.shape[0]), int(image.shape[1]))
    return LungFields(right=_to_grid(right, shape), left=_to_grid(left, shape), fallback=fallback)


def _to_grid(mask: BoolArray, shape: tuple[int, int]) -> BoolArray:
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR
    )
    result: BoolArray = np.asarray(resized) >= 128
    return result


def _otsu(values: npt.NDArray[np.float32]) -> float:
    histogram, edges = np.histogram(values, bins=128, range=(0.0, 1.0))
    weights = histogram.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(weights)
    w1 = w0[-1] - w0
    m0 = np.cumsum(weights * centres)
    mean0 = m0 / np.maximum(w0, 1e-12)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def _disk(radius: int) -> BoolArray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    result: BoolArray = x * x + y * y <= radius * radius
    return result


def _content_box(work: npt.NDArray[np.float32]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) without the blank bands some radiographs carry at their edges
    (rows or columns that are nearly black throughout)."""
    level = 0.05 * float(work.max())
    rows = np.flatnonzero(work.mean(axis=1) > level)
    cols = np.flatnonzero(work.mean(axis=0) > level)
    size = work.shape[0]
    if rows.size < size // 4 or cols.size < size // 4:
        return 0, size, 0, size
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _envelope(
    size: int, box: tuple[int, int, int, int], half_width: float, half_height: float
) -> tuple[BoolArray, BoolArray]:
    """Ellipses (image left, image right) where lungs lie on a PA view, as fractions of the
    radiograph's content box: centres at x = 0.28 / 0.72, y = 0.48."""
    top, bottom, left, right = box
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    y = (rows - top) / (bottom - top)
    x = (cols - left) / (right - left)

    def ellipse(centre_x: float) -> BoolArray:
        inside: BoolArray = ((x - centre_x) / half_width) ** 2 + (
            (y - 0.48) / half_height
        ) ** 2 <= 1.0
        return inside

    return ellipse(0.28), ellipse(0.72)


def _segment_work(
    work: npt.NDArray[np.float32],
) -> tuple[BoolArray, BoolArray, tuple[Laterality, ...]]:
    """Right and left lung on the working grid (patient's right = image left)."""
    size = work.shape[0]
    low, high = np.percentile(work, (1.0, 99.0))
    if high - low < MIN_CONTRAST:  # a blank or flat image shows no lungs
        blank = _envelope(size, (0, size, 0, size), TEMPLATE[0], TEMPLATE[1])
        return blank[0], blank[1], ("right", "left")
    stretched = np.clip((work - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)
    smooth = np.asarray(ndimage.gaussian_filter(stretched, sigma=1.5), dtype=np.float32)
    box = _content_box(work)
    top, bottom, left, right = box
    height, width = bottom - top, right - left
    centre = smooth[
        top + height // 8 : bottom - height // 8, left + width // 8 : right - width // 8
    ]
    dark = smooth < _otsu(centre)
    masks: dict[str, BoolArray] = {}
    fallback: list[Laterality] = []
    envelopes = _envelope(size, box, ENVELOPE[0], ENVELOPE[1])
    templates = _envelope(size, box, TEMPLATE[0], TEMPLATE[1])
    sides: tuple[Laterality, Laterality] = ("right", "left")
    for side, envelope, template in zip(sides, envelopes, templates, strict=True):
        candidate = ndimage.binary_opening(dark & envelope, structure=_disk(3))
        labels, count = ndimage.label(candidate)
        if count:
            sizes = ndimage.sum_labels(candidate, labels, index=np.arange(1, count + 1))
            largest = int(np.argmax(sizes))
        if not count or sizes[largest] < MIN_LUNG_FRACTION * height * width:
            masks[side] = template
            fallback.append(side)
            continue
        mask = ndimage.binary_closing(labels == largest + 1, structure=_disk(10), border_value=0)
        masks[side] = np.asarray(ndimage.binary_fill_holes(mask), dtype=np.bool_)
    return masks["right"], masks["left"], tuple(fallback)
