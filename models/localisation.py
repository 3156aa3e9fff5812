"""Localisation metrics of heatmaps against expert boxes: pointing game, IoU and Dice.

Conventions (all stated here so the numbers can be reproduced by hand):

- A :class:`Box` is ``(x, y, w, h)`` in continuous pixel coordinates of the image it was drawn on,
  ``(x, y)`` its top-left corner, as NIH ``BBox_List_2017`` gives them. Pixel ``(row, col)`` covers
  ``[col, col + 1) x [row, row + 1)``; it belongs to a box when its **centre**
  ``(col + 0.5, row + 0.5)`` lies in ``[x, x + w) x [y, y + h)``.
- A heatmap is a 2-D array covering the whole image. When its shape differs from the image the
  boxes were drawn on (``image_shape``), the boxes are scaled onto the heatmap's grid.
- **Pointing game** (Zhang et al. 2016): a hit when the heatmap's maximum (the first one in
  row-major order, as ``numpy.argmax`` finds it) lies within ``tolerance`` pixels of any of the
  finding's boxes (tolerance 0: the pixel's centre inside a box).
- **IoU and Dice** compare the thresholded heatmap with the union of the finding's box masks. The
  heatmap is first min-max normalised to [0, 1] (:func:`models.cam.normalise_map`; a constant map
  becomes all zeros), then a pixel is in the predicted region when its value is ``>= threshold``.
  Two empty masks agree perfectly (IoU = Dice = 1).
- **Threshold tuning** picks, on the *tuning* split, the threshold of the grid with the highest
  mean IoU (or Dice, by choice); ties go to the smallest threshold. The scores reported are those
  of the *report* split at that threshold. :func:`split_of` assigns each image to a split
  deterministically from a hash of its **patient** id (``00013911_000.png`` -> ``00013911``), so
  follow-up images of one patient never straddle the two splits.
"""

import csv
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.cam import normalise_map
from models.metrics import open_text

BoolArray = npt.NDArray[np.bool_]
Metric = Literal["iou", "dice"]
Split = Literal["tune", "report"]
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))
# NIH names the box label "Infiltrate" and the image label "Infiltration".
BOX_LABEL_ALIASES: Mapping[str, str] = {"Infiltrate": "Infiltration"}


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``(x, y, w, h)``: top-left corner, width, height, in pixels."""

    x: float
    y: float
    w: float
    h: float

    def __post_init__(self) -> None:
        values = (self.x, self.y, self.w, self.h)
        if not all(np.isfinite(v) for v in values):
            raise ValueError(f"box coordinates must be finite: {values}")
        if self.w <= 0 or self.h <= 0:
            raise ValueError(f"box width and height must be positive: {values}")

    def scaled(self, row_scale: float, col_scale: float) -> "Box":
        return Box(self.x * col_scale, self.y * row_scale, self.w * col_scale, self.h * row_scale)

    def mask(self, shape: tuple[int, int]) -> BoolArray:
        """Pixels of a ``shape`` grid whose centres lie inside the box."""
        rows, cols = shape
        row_centres = np.arange(rows) + 0.5
        col_centres = np.arange(cols) + 0.5
        in_rows = (row_centres >= self.y) & (row_centres < self.y + self.h)
        in_cols = (col_centres >= self.x) & (col_centres < self.x + self.w)
        result: BoolArray = in_rows[:, np.newaxis] & in_cols[np.newaxis, :]
        return result

    def distance(self, row: float, col: float) -> float:
        """Euclidean distance from a point ``(col, row)`` to the box (0 inside)."""
        dx = max(self.x - col, 0.0, col - (self.x + self.w))
        dy = max(self.y - row, 0.0, row - (self.y + self.h))
        return float(np.hypot(dx, dy))


def _check_heatmap(heatmap: npt.NDArray[np.floating]) -> None:
    if not isinstance(heatmap, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(heatmap).__name__}")
    if heatmap.ndim != 2 or min(heatmap.shape) < 1:
        raise ValueError(f"expected a non-empty 2-D heatmap, got shape {heatmap.shape}")
    if not np.isfinite(heatmap).all():
        raise ValueError("heatmap holds NaN or infinity")


def _on_grid(
    boxes: Sequence[Box], shape: tuple[int, int], image_shape: tuple[int, int] | None
) -> list[Box]:
    if not boxes:
        raise ValueError("no boxes")
    if image_shape is None or tuple(image_shape) == tuple(shape):
        return list(boxes)
    row_scale, col_scale = shape[0] / image_shape[0], shape[1] / image_shape[1]
    return [box.scaled(row_scale, col_scale) for box in boxes]


def boxes_mask(
    boxes: Sequence[Box], shape: tuple[int, int], image_shape: tuple[int, int] | None = None
) -> BoolArray:
    """The union of the boxes' masks on a ``shape`` grid."""
    result = np.zeros(shape, dtype=np.bool_)
    for box in _on_grid(boxes, shape, image_shape):
        result |= box.mask(shape)
    return result


def peak(heatmap: npt.NDArray[np.floating]) -> tuple[int, int]:
    """``(row, col)`` of the heatmap's first maximum in row-major order."""
    _check_heatmap(heatmap)
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(col)


def pointing_hit(
    heatmap: npt.NDArray[np.floating],
    boxes: Sequence[Box],
    *,
    tolerance: float = 0.0,
    image_shape: tuple[int, int] | None = None,
) -> bool:
    """Pointing game: is the heatmap's peak within ``tolerance`` heatmap pixels of a box?"""
    if tolerance < 0:
        raise ValueError("tolerance must be >= 0")
    row, col = peak(heatmap)
    on_grid = _on_grid(boxes, (heatmap.shape[0], heatmap.shape[1]), image_shape)
    centre_row, centre_col = row + 0.5, col + 0.5
    if tolerance == 0.0:
        return any(
            box.x <= centre_col < box.x + box.w and box.y <= centre_row < box.y + box.h
            for box in on_grid
        )
    return any(box.distance(centre_row, centre_col) <= tolerance for box in on_grid)


def iou(predicted: BoolArray, truth: BoolArray) -> float:
    """Intersection over union of two masks (1.0 when both are empty)."""
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} vs {truth.shape}")
    union = int(np.count_nonzero(predicted | truth))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(predicted & truth)) / union


def dice(predicted: BoolArray, truth: BoolArray) -> float:
    """Dice coefficient ``2|A n B| / (|A| + |B|)`` of two masks (1.0 when both are empty)."""
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} vs {truth.shape}")
    total = int(np.count_nonzero(predicted)) + int(np.count_nonzero(truth))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(predicted & truth)) / total


def threshold_heatmap(heatmap: npt.NDArray[np.floating], threshold: float) -> BoolArray:
    """Min-max normalise, then keep pixels ``>= threshold``."""
    _check_heatmap(heatmap)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is outside [0, 1]")
    result: BoolArray = normalise_map(heatmap) >= np.float32(threshold)
    return result


@dataclass(frozen=True)
class LocalisationCase:
    """One image's heatmap for one finding and that finding's expert boxes."""

    image_index: str
    finding: str
    heatmap: npt.NDArray[np.floating]
    boxes: tuple[Box, ...]
    image_shape: tuple[int, int] | None = None

    def truth_mask(self) -> BoolArray:
        return boxes_mask(
            self.boxes, (self.heatmap.shape[0], self.heatmap.shape[1]), self.image_shape
        )


@dataclass(frozen=True)
class CaseScore:
    image_index: str
    finding: str
    hit: bool
    iou: float
    dice: float


@dataclass(frozen=True)
class LocalisationSummary:
    """Hit rate, mean IoU and mean Dice of some cases at one threshold."""

    threshold: float
    n_cases: int
    hits: int
    mean_iou: float
    mean_dice: float
    cases: tuple[CaseScore, ...]

    @property
    def hit_rate(self) -> float:
        return self.hits / self.n_cases if self.n_cases else float("nan")


def score_case(case: LocalisationCase, threshold: float, *, tolerance: float = 0.0) -> CaseScore:
    truth = case.truth_mask()
    predicted = threshold_heatmap(case.heatmap, threshold)
    return CaseScore(
        image_index=case.image_index,
        finding=case.finding,
        hit=pointing_hit(
            case.heatmap, case.boxes, tolerance=tolerance, image_shape=case.image_shape
        ),
        iou=iou(predicted, truth),
        dice=dice(predicted, truth),
    )


def evaluate_localisation(
    cases: Sequence[LocalisationCase], threshold: float, *, tolerance: float = 0.0
) -> LocalisationSummary:
    """Score every case at ``threshold``."""
    scores = tuple(score_case(case, threshold, tolerance=tolerance) for case in cases)
    return LocalisationSummary(
        threshold=float(threshold),
        n_cases=len(scores),
        hits=sum(score.hit for score in scores),
        mean_iou=float(np.mean([s.iou for s in scores])) if scores else float("nan"),
        mean_dice=float(np.mean([s.dice for s in scores])) if scores else float("nan"),
        cases=scores,
    )


@dataclass(frozen=True)
class ThresholdTuning:
    """The chosen threshold and the mean score of every threshold tried (tuning split)."""

    threshold: float
    metric: Metric
    best_score: float
    table: tuple[tuple[float, float], ...]


def tune_threshold(
    cases: Sequence[LocalisationCase],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    metric: Metric = "iou",
) -> ThresholdTuning:
    """The threshold with the highest mean IoU (or Dice) over ``cases``; ties: the smallest."""
    if not cases:
        raise ValueError("no cases to tune on")
    if not thresholds:
        raise ValueError("no thresholds to try")
    if metric not in ("iou", "dice"):
        raise ValueError(f"metric must be 'iou' or 'dice', not {metric!r}")
    score = iou if metric == "iou" else dice
    normalised = [(normalise_map(case.heatmap), case.truth_mask()) for case in cases]
    table = []
    for threshold in sorted(float(t) for t in thresholds):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is outside [0, 1]")
        level = np.float32(threshold)
        table.append(
            (threshold, float(np.mean([score(heat >= level, truth) for heat, truth in normalised])))
        )
    best = max(value for _, value in table)
    chosen = next(threshold for threshold, value in table if value == best)
    return ThresholdTuning(threshold=chosen, metric=metric, best_score=best, table=tuple(table))


def patient_of(image_index: str) -> str:
    """NIH patient id of an image index (``00013911_000.png`` -> ``00013911``)."""
    return Path(image_index).name.split("_", 1)[0]


def split_of(image_index: str, *, tune_fraction: float = 0.5, salt: str = "radlight") -> Split:
    """Deterministic split of an image by a sha256 of its patient id (see module doc)."""
    if not 0.0 < tune_fraction < 1.0:
        raise ValueError("tune_fraction must be in (0, 1)")
    digest = hashlib.sha256(f"{salt}:{patient_of(image_index)}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    return "tune" if position < tune_fraction else "report"


@dataclass(frozen=True)
class TunedReport:
    """Threshold tuned on one split, scores reported on the other."""

    tuning: ThresholdTuning
    tune_cases: tuple[str, ...]
    report: LocalisationSummary


def tune_and_report(
    cases: Sequence[LocalisationCase],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    metric: Metric = "iou",
    tune_fraction: float = 0.5,
    salt: str = "radlight",
    tolerance: float = 0.0,
) -> TunedReport:
    """Split by patient, tune on the ``tune`` split, report on the ``report`` split."""
    tune = [
        c
        for c in cases
        if split_of(c.image_index, tune_fraction=tune_fraction, salt=salt) == "tune"
    ]
    report = [
        c
        for c in cases
        if split_of(c.image_index, tune_fraction=tune_fraction, salt=salt) == "report"
    ]
    if not tune or not report:
        raise ValueError(
            f"the split left {len(tune)} tuning and {len(report)} report cases; need both"
        )
    tuning = tune_threshold(tune, thresholds=thresholds, metric=metric)
    return TunedReport(
        tuning=tuning,
        tune_cases=tuple(c.image_index for c in tune),
        report=evaluate_localisation(report, tuning.threshold, tolerance=tolerance),
    )


def read_boxes(path: Path) -> dict[tuple[str, str], tuple[Box, ...]]:
    """Expert boxes from a CSV (or ``.csv.gz``): ``image_index``, ``finding_label``, ``x, y, w, h``
    (or NIH's ``Image Index``, ``Finding Label``, ``Bbox [x, y, w, h]``).

    Returns ``{(image_index, finding): boxes}`` with NIH's "Infiltrate" read as "Infiltration".
    """
    found: dict[tuple[str, str], list[Box]] = {}
    path = Path(path)
    with open_text(path) as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader)]
        try:
            image_col = _column(header, "image_index", "Image Index")
            label_col = _column(header, "finding_label", "Finding Label")
            x_col = _column(header, "x", "Bbox [x")
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        for row in reader:
            if not row:
                continue
            label = row[label_col].strip()
            label = BOX_LABEL_ALIASES.get(label, label)
            x, y, w, h = (float(row[x_col + k]) for k in range(4))
            found.setdefault((row[image_col].strip(), label), []).append(Box(x, y, w, h))
    return {key: tuple(boxes) for key, boxes in found.items()}


def _column(header: list[str], *names: str) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise ValueError(f"no column named any of {names}")
